"""The Ray Tune adapters: the tree's search algorithm and scheduler, the trial function, the progress lines and
the status table. The search logic they adapt (the tree, its rules and orders, Optuna's among them) is in `core/`."""
