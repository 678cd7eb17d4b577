"""python -m k8s_apiserver (from tests/): serve until interrupted."""

from . import main

main()
