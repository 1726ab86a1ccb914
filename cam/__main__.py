"""``python -m cam``: the command line of cam.cli."""

from cam.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
