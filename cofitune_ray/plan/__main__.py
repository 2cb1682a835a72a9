"""`python -m cofitune_ray.plan`: the memory plan of a config (`plan/memory.py`)."""

import sys

from cofitune_ray.plan.memory import main

sys.exit(main())
