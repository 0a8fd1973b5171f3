"""Write tests/assets/minilm-reference.json: all-MiniLM-L6-v2 vectors from sentence-transformers itself.

    pip install -e '.[bench]'          # torch (CPU) + sentence-transformers
    python -m bench.minilm_reference   # rewrites the fixture

The unit of truth for the local engine: ``tests/wire/test_onnx_encoder.py`` compares the ONNX Runtime
engine with these vectors (cosine >= 0.999, same token ids, same nearest neighbours) without needing
torch. The texts are varied on purpose: empty and blank, one letter, code, SQL, HTML, several
scripts and emoji, and two texts longer than the 256-token limit (truncated alike).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "assets" / "minilm-reference.json"

TEXTS = [
    "How many vacation days do I get?",
    "vacation",
    "",
    "   ",
    "a",
    "VPN setup on macOS: install the client, then sign in with SSO.\n\nIf it fails, reset your token.",
    "The on-call engineer acknowledges pages within 15 minutes; escalate to the secondary after 30.",
    "SELECT cost_center, SUM(amount) FROM expenses WHERE status = 'approved' GROUP BY 1;",
    "def handler(event):\n    return {'statusCode': 200, 'body': json.dumps(event)}",
    "Ünïcödé façade naïve café — “quotes”, ‘apostrophes’ and emoji 🚀🔥",
    "中文文本测试：嵌入模型应该处理汉字。",
    "Привет, как дела? Это тест на кириллице.",
    "Expense reports over $5,000 need VP approval (policy FIN-204, rev. 2024-03).",
    "gw-lis dbx-prod-eu-west-1 s3://bucket/path/to/delta_table",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
    "the quick brown fox jumps over the lazy dog",
    "word " * 400,  # longer than 256 word pieces: truncated like sentence-transformers
    "Deploys roll back automatically when error rates exceed 2% for five minutes. " * 12,
    "<p>HTML &amp; entities &lt;b&gt; survive</p>",
    "\t tabs\tand\nnewlines\r\nmixed ",
    "1234567890 3.14159 2.71828 1e-9",
    "Parental leave: 16 weeks fully paid for the primary caregiver, 8 for the secondary.",
]
QUERIES = ["how long is parental leave", "approve a large expense", "vpn on a mac", "what to do when paged",
           "roll back a deploy", "sql query for approved expenses"]


def main() -> int:
    try:
        from sentence_transformers import SentenceTransformer  # heavy: the reference only
    except ImportError:
        print("sentence-transformers is not installed: pip install -e '.[bench]'", file=sys.stderr)
        return 1
    from ingest.embeddings.weights import MINILM_SHA256, ensure_verified, minilm_path

    model_dir = minilm_path()
    ensure_verified(model_dir, MINILM_SHA256)
    model = SentenceTransformer(str(model_dir), device="cpu")
    texts = TEXTS + QUERIES
    vectors = model.encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False)
    ids = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]
    import sentence_transformers

    fixture = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "sha256": MINILM_SHA256,
        "generated_by": f"bench/minilm_reference.py, sentence-transformers {sentence_transformers.__version__}",
        "max_seq_length": model.max_seq_length,
        "queries": len(QUERIES),
        "items": [{"text": t, "ids": list(map(int, i)), "vector": [round(float(x), 7) for x in v]}
                  for t, i, v in zip(texts, ids, vectors)],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(fixture, ensure_ascii=False, separators=(",", ":")) + "\n", "utf-8")
    print(f"wrote {OUT} ({len(texts)} texts, {OUT.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
