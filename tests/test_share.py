"""cam.serve.share: links that carry the view (checked on the way in) and the comparison as one self-contained web
page."""

from __future__ import annotations

import re

import numpy as np

from cam.explain.pipeline import Panel
from cam.serve import share

SETS, METHODS, COLOURS = ("photos", "cifar"), ("layer_cam", "hires_cam", "score_cam"), ("jet", "viridis", "cividis")


def decode(params: dict[str, str]) -> tuple[share.View, list[str]]:
    return share.decode(params, SETS, METHODS, COLOURS, max_methods=2)


def test_a_view_survives_its_link() -> None:
    view = share.View("cifar", "horse", ("layer_cam", "score_cam"), "cividis", 0.35, True, "pets/test/dog/0002.png")
    params = share.encode(view)
    assert params == {"set": "cifar", "class": "horse", "methods": "layer_cam,score_cam", "colours": "cividis",
                      "opacity": "0.35", "raw": "1", "image": "pets/test/dog/0002.png"}
    assert decode(params) == (view, [])
    assert share.encode(share.View("photos")) == {"set": "photos"} and decode({}) == (share.View(), [])


def test_what_a_link_may_not_ask_for_is_left_out_and_said() -> None:
    view, problems = decode({"set": "imagenet", "class": "<script>", "methods": "layer_cam,bogus,hires_cam,score_cam",
                             "colours": "rainbow", "opacity": "2", "raw": "yes", "image": "../../etc/passwd"})
    assert view == share.View(methods=("layer_cam", "hires_cam"))
    assert len(problems) == 6 and all("/" not in problem and "<" not in problem for problem in problems)
    assert decode({"opacity": "nan"})[0].opacity is None and decode({"opacity": "half"})[1]
    assert decode({"image": "/etc/passwd"})[0].image is None


def test_the_comparison_page_holds_everything_it_shows() -> None:
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    panels = [Panel("grad_cam", "Grad-CAM", "Grad-CAM on VGG16: cat, 72% — map of 2x2 cells, shown at 40x30", "",
                    photo, np.zeros((2, 2)), "Left colour: no evidence for *cat*", "VGG16 found nothing", ""),
              Panel("nopool_cam", "NoPool-GAP CAM", "NoPool-GAP CAM on NoPool-GAP: cat, 5% — map", "", photo,
                    np.ones((30, 40)), "legend", "", "NoPool-GAP thinks this is horse (91%); <b>x</b>")]
    page = share.comparison_page("Uploaded photo “a&b.jpg”", photo, panels,
                                 {"VGG16": [("cat", 0.72)], "NoPool-GAP": [("horse", 0.91)]},
                                 [("Grad-CAM", "Regions that raised the score.")], np.zeros((4, 64, 3), np.uint8))
    assert page.startswith("<!DOCTYPE html>") and "a&amp;b.jpg" in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert len(re.findall(r'src="data:image/jpeg;base64,[A-Za-z0-9+/=]+"', page)) == 1 + 2 + 2  # photo, panels, strips
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing to fetch: it opens offline
    for text in ("map of 2x2 cells", "no evidence for <em>cat</em>", "VGG16 found nothing", "horse</td><td>91%",
                 "Regions that raised the score."):
        assert text in page


def test_the_detail_level_travels_in_the_link_and_only_known_ones() -> None:
    view = share.View("photos", detail="finer")
    assert share.encode(view) == {"set": "photos", "detail": "finer"} and decode(share.encode(view)) == (view, [])
    kept, problems = decode({"detail": "ultra"})
    assert kept.detail is None and problems == ["The link asks for a detail level this page does not have; the "
                                                "default is shown."]


def test_a_link_carries_the_zoom_and_says_when_it_was_made_from_an_upload() -> None:
    view = share.View("photos", zoom=(10.4, 200.0, 150.0, 20.0), uploaded=True)
    params = share.encode(view)
    assert params == {"set": "photos", "zoom": "10,200,150,20", "upload": "1"}
    assert decode(params) == (share.View("photos", zoom=(10.0, 200.0, 150.0, 20.0), uploaded=True), [])
    for bad in ("1,2,3", "200,10,150,20", "10,200,20,150", "a,b,c,d", "nan,1,2,0", "-50,10,20,5"):
        view, problems = decode({"zoom": bad})
        assert view.zoom is None and problems == ["The link's zoom is not a box on the picture; the whole picture is "
                                                  "shown."], bad


def test_the_comparison_page_opens_with_the_verdict() -> None:
    photo = np.zeros((20, 20, 3), np.uint8)
    page = share.comparison_page("x", photo, [], {}, [], verdict="**Not sure**: neither network is confident & <so>.")
    assert '<p class="verdict"><strong>Not sure</strong>: neither network is confident &amp; &lt;so&gt;.</p>' in page
    assert 'class="verdict"' not in share.comparison_page("x", photo, [], {}, [])
