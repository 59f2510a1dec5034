import os

import torch

pytest_plugins = ["tests.db_fixtures", "tests.model_fixtures"]

# Tiny models run fastest on one thread; two threads per op fight over two cores shared with the
# database server and the Prefect server the tests start.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
