"""Data loaders: every format and source, and a clear DataError (file, line, field) for bad records."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from forge_sdk.errors import DataError
from forge_train.data import (
    load_dpo_dataset,
    load_jsonl,
    load_pretrain_dataset,
    load_sft_dataset,
    prepare_chat_format,
    save_jsonl,
)

CHAT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
PAIR = {"prompt": "Say hi", "chosen": "Hi!", "rejected": "Go away."}


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def _csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# --- real data -----------------------------------------------------------------------------


def test_real_files_load(shared_data):
    sft = load_sft_dataset(shared_data / "sft_alpaca_2k.jsonl")
    assert len(sft) == 2000 and sft[0]["messages"][-1]["role"] == "assistant"
    dpo = load_dpo_dataset(shared_data / "dpo_hh_1k.jsonl", limit=50)
    row = dpo[0]
    assert row["prompt"][-1]["role"] == "user"  # conversational, from prompt_messages
    assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
    std = load_dpo_dataset(shared_data / "dpo_hh_1k.jsonl", format="standard", limit=5)
    assert std[0]["prompt"].startswith("Human:") and isinstance(std[0]["chosen"], str)
    text = load_pretrain_dataset(shared_data / "pretrain_gutenberg_5mb.txt", chunk_chars=4000)
    assert 1000 < len(text) < 2000 and all(len(t) <= 8000 for t in text["text"][:100])


# --- formats and sources -------------------------------------------------------------------


def test_sft_formats_normalise_to_messages(tmp_path):
    path = _jsonl(
        tmp_path / "mixed.jsonl",
        [
            CHAT,
            {"prompt": "2+2?", "response": "4", "system": "Be terse."},
            {"prompt": "3+3?", "completion": "6"},
            {"instruction": "Add", "input": "1 and 2", "output": "3"},
        ],
    )
    ds = load_sft_dataset(path)
    assert ds[1]["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    assert ds[2]["messages"][-1]["content"] == "6"
    assert ds[3]["messages"][0]["content"] == "Add\n\n1 and 2"


def test_field_mapping_and_limit(tmp_path):
    path = _jsonl(tmp_path / "qa.jsonl", [{"question": f"q{i}", "answer": f"a{i}"} for i in range(5)])
    ds = load_sft_dataset(
        path, format="prompt_response", fields={"prompt": "question", "response": "answer"}, limit=3
    )
    assert len(ds) == 3 and ds[2]["messages"][1]["content"] == "a2"


def test_json_csv_parquet_and_saved_folder(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    (tmp_path / "d.json").write_text(json.dumps([PAIR, PAIR]))
    assert len(load_dpo_dataset(tmp_path / "d.json")) == 2
    _csv(tmp_path / "d.csv", ["prompt", "response"], [["hi", "hello"], ["bye", "ciao"]])
    assert load_sft_dataset(tmp_path / "d.csv")[1]["messages"][1]["content"] == "ciao"
    _csv(tmp_path / "m.csv", ["messages"], [[json.dumps(CHAT["messages"])]])
    assert load_sft_dataset(tmp_path / "m.csv")[0]["messages"] == CHAT["messages"]
    pq.write_table(pa.Table.from_pylist([{"text": "alpha"}, {"text": "beta"}]), tmp_path / "t.parquet")
    assert load_pretrain_dataset(tmp_path / "t.parquet")["text"] == ["alpha", "beta"]
    Dataset.from_list([PAIR] * 3).save_to_disk(str(tmp_path / "saved"))
    assert len(load_dpo_dataset(tmp_path / "saved")) == 3


def test_jsonl_round_trip(tmp_path):
    rows = [{"a": 1, "text": "héllo"}, {"a": 2, "text": "wörld"}]
    save_jsonl(rows, tmp_path / "sub" / "x.jsonl")
    assert load_jsonl(tmp_path / "sub" / "x.jsonl") == rows


def test_prepare_chat_format(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    long = {"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]}
    ds = load_sft_dataset(_jsonl(tmp_path / "c.jsonl", [CHAT, long]))
    out = prepare_chat_format(ds, tok, max_len=64)
    assert out.column_names == ["text"] and len(out) == 1
    assert out[0]["text"] == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"


# --- malformed input: one clear error naming file, line/record and field ------------------


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([CHAT, "{not json"], r"bad\.jsonl: line 2: invalid JSON"),
        ([CHAT, "[1, 2]"], r"line 2: expected a JSON object, got list"),
        ([CHAT, {"text": "x"}], r"line 2: no SFT fields"),
        ([{"messages": []}], r"line 1: field 'messages': expected a non-empty list"),
        ([{"messages": [{"role": "robot", "content": "x"}]}], r"line 1: field 'messages\[0\]\.role'"),
        (
            [{"messages": [{"role": "user", "content": 5}]}],
            r"field 'messages\[0\]\.content': expected a string",
        ),
        ([{"messages": [{"role": "user", "content": "x"}]}], r"field 'messages': has no assistant message"),
        ([CHAT, "", {"prompt": "x", "response": ""}], r"line 3: field 'response': is empty"),
        ([{"instruction": "x"}], r"line 1: field 'output': missing"),
    ],
)
def test_sft_jsonl_errors(tmp_path, rows, match):
    with pytest.raises(DataError, match=match):
        load_sft_dataset(_jsonl(tmp_path / "bad.jsonl", rows))


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([PAIR, {"prompt": "x", "chosen": "y"}], r"line 2: field 'rejected': missing"),
        (
            [{"prompt": 3, "chosen": "a", "rejected": "b"}],
            r"line 1: field 'prompt': expected a string, got int",
        ),
        (
            [{"prompt_messages": [{"role": "user"}], "chosen": "a", "rejected": "b"}],
            r"line 1: field 'prompt_messages\[0\]\.role'|field 'prompt_messages\[0\]\.content'",
        ),
    ],
)
def test_dpo_jsonl_errors(tmp_path, rows, match):
    with pytest.raises(DataError, match=match):
        load_dpo_dataset(_jsonl(tmp_path / "bad.jsonl", rows))


def test_json_errors(tmp_path):
    (tmp_path / "a.json").write_text('[{"prompt": "x",\n "response": }]')
    with pytest.raises(DataError, match=r"a\.json: line 2: invalid JSON"):
        load_sft_dataset(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(DataError, match=r"b\.json: expected a JSON list of records, got dict"):
        load_sft_dataset(tmp_path / "b.json")
    (tmp_path / "c.json").write_text(json.dumps([PAIR, {"prompt": "p", "chosen": ["x"], "rejected": "r"}]))
    with pytest.raises(DataError, match=r"c\.json: record 2: field 'chosen\[0\]'"):
        load_dpo_dataset(tmp_path / "c.json")


def test_csv_errors(tmp_path):
    _csv(tmp_path / "a.csv", ["prompt", "response"], [["hi", "hello"], ["bye", "ciao", "extra"]])
    with pytest.raises(DataError, match=r"a\.csv: record 2: has more values than the 2 header columns"):
        load_sft_dataset(tmp_path / "a.csv")
    _csv(tmp_path / "b.csv", ["prompt", "chosen"], [["hi", "hello"]])
    with pytest.raises(DataError, match=r"b\.csv: record 1: field 'rejected': missing"):
        load_dpo_dataset(tmp_path / "b.csv")


def test_parquet_errors(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"text": "ok"}, {"text": ""}]), tmp_path / "a.parquet")
    with pytest.raises(DataError, match=r"a\.parquet: record 2: field 'text': is empty"):
        load_pretrain_dataset(tmp_path / "a.parquet")
    (tmp_path / "b.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"b\.parquet: not a readable parquet file"):
        load_pretrain_dataset(tmp_path / "b.parquet")


def test_text_and_source_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    with pytest.raises(DataError, match=r"empty\.txt: no text"):
        load_pretrain_dataset(tmp_path / "empty.txt")
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.txt: not UTF-8 text"):
        load_pretrain_dataset(tmp_path / "latin.txt")
    with pytest.raises(DataError, match=r"dataset file not found: .*missing\.jsonl"):
        load_sft_dataset(tmp_path / "missing.jsonl")
    (tmp_path / "x.xlsx").write_text("")
    with pytest.raises(DataError, match=r"unsupported data file type '\.xlsx'"):
        load_sft_dataset(tmp_path / "x.xlsx")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match=r"folder: not a dataset folder"):
        load_sft_dataset(tmp_path / "folder")
    with pytest.raises(DataError, match=r"no records"):
        load_sft_dataset(_jsonl(tmp_path / "blank.jsonl", [""]))


def test_unknown_hub_id_is_a_data_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"cannot load dataset 'nobody/no-such-dataset'"):
        load_sft_dataset("nobody/no-such-dataset")
