"""`python -m pydist.worker`: start a worker process (see pydist.worker)."""

from pydist.worker import main

main()
