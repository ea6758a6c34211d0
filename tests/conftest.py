import os

# Tests never reach the network: every Hub lookup must come from local files or fail fast.
os.environ["HF_HUB_OFFLINE"] = "1"
