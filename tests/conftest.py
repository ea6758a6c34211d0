import os

import torch

# Tests never reach the network: every Hub lookup must come from local files or fail fast.
os.environ["HF_HUB_OFFLINE"] = "1"

# The test models are tiny: one intra-op thread beats two that wait on each other, and keeps
# the suite steady when the machine is busy.
torch.set_num_threads(1)
