"""The modelfleet operator (import name ``modelfleet_operator``; the folder is ``operator/``)."""

GROUP = "modelfleet.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
