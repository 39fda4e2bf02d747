import pytest

from tests.server.tiny_chat_model import save_tiny_chat_model


@pytest.fixture(scope="session")
def tiny_chat_dir(tmp_path_factory):
    """A tiny random Llama with a real BPE tokenizer and chat template, saved once per session."""
    return save_tiny_chat_model(tmp_path_factory.mktemp("tiny_chat"))
