import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_prior():
    from silo.testing import tiny_prior as build

    return build(conditional=False)


@pytest.fixture(scope="session")
def tiny_conditional_prior():
    from silo.testing import tiny_prior as build

    return build(conditional=True)
