"""The explanation methods (``methods``), the registry that names them (``registry``), maps to pictures
(``render``), one image from file to panels (``pipeline``) and the verdict sentence (``verdict``)."""
