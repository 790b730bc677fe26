"""spokenlm.corpora and spokenlm.slue.sources on tiny corpora the tests write in every format.

The same 20 SLUE-VoxPopuli-style utterances (text + NER; audio synthesised, stored losslessly as
FLAC) are written as a spokenlm manifest, a Hugging Face `save_to_disk` DatasetDict (Arrow stream
files, Audio structs holding the FLAC bytes, NER as the hub's ClassLabel dict of lists), parquet
shards (decoded audio arrays, SLUE-literal NER in a `ner` column), a Lhotse CutSet (written by lhotse
itself; each cut starts 0.5 s into a padded recording) and a Kaldi data dir (wav.scp + segments into
the same padded recordings, text, utt2spk, utt2normalized_ner). Each must give the same waveforms,
the same SLUE records, and the same `spokenlm eval slue` predictions and metrics.

The HF directory is written with pyarrow in the layout `datasets` writes (dataset_dict.json,
state.json, Arrow IPC stream files with the features in the schema's "huggingface" metadata): the
`datasets` package itself cannot join this environment's pins (it would downgrade fsspec and s3fs).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from spokenlm.audio import load_audio
from spokenlm.corpora import AudioRef, CorpusError, detect_format, load_ref, read_corpus, split_of_name
from spokenlm.slue.readers import SlueDataError
from spokenlm.slue.sources import read_slue_data
from spokenlm.tasks import NER_TAGS
from spokenlm.train.data import AudioCache, read_manifest

SR = 16_000
PAD = SR // 2  # the Lhotse and Kaldi recordings hold each clip 0.5 s in, with 0.5 s after
PLACES = ["strasbourg", "brussels", "paris", "lisbon", "vienna"]
DAYS = ["monday", "tuesday", "friday", "yesterday"]
ORGS = ["the european commission", "the united nations", "the council"]


def _utterances() -> list[dict]:
    """20 utterances: SLUE-style id, normalized text, NER spans (tag, start, length) over the text."""
    out = []
    for i in range(20):
        place, day, org = PLACES[i % 5], DAYS[i % 4], ORGS[i % 3]
        if i % 4 == 3:  # some sentences have no entity
            text, spans = f"we all agreed at the last session number {i}", []
        else:
            text = f"{org} met in {place} on {day}"
            spans = [("ORG", 0, len(org)), ("GPE", text.index(place), len(place)), ("DATE", text.index(day), len(day))]
            if i % 4 == 2:
                spans = spans[1:]  # "the european commission" unlabelled: NER is what is labelled
        utt = f"2015{i:04d}-0900-PLENARY-{i}-en_20150518-18:48:{i:02d}_{i % 3}"
        out.append({"id": utt, "text": text, "ner": spans, "speaker": f"spk{i % 4}"})
    return out


def _clip(i: int) -> np.ndarray:
    """A 0.6-1.2 s synthetic clip as int16 (what FLAC stores exactly)."""
    rng = np.random.default_rng(i)
    n = int(SR * (0.6 + 0.03 * i)) + i  # not a round number of samples
    t = np.arange(n) / SR
    wav = 0.3 * np.sin(2 * np.pi * (150 + 20 * i) * t) + 0.05 * rng.standard_normal(n)
    return np.round(np.clip(wav, -1, 1) * 32767).astype(np.int16)


def _ner_literal(spans) -> str:
    return repr([list(s) for s in spans]) if spans else "None"


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpora")
    utts = _utterances()
    (root / "clips").mkdir()
    (root / "recordings").mkdir()
    for i, u in enumerate(utts):
        clip = _clip(i)
        u["samples"] = len(clip)
        sf.write(root / "clips" / f"{i:02d}.flac", clip, SR, subtype="PCM_16")
        padded = np.concatenate([np.zeros(PAD, np.int16), clip, np.zeros(PAD, np.int16)])
        sf.write(root / "recordings" / f"rec{i:02d}.flac", padded, SR, subtype="PCM_16")
    _write_manifest(root, utts)
    _write_hf(root, utts)
    _write_parquet(root, utts)
    _write_lhotse(root, utts)
    _write_kaldi(root, utts)
    (root / "utts.json").write_text(json.dumps(utts))
    return root


def _write_manifest(root: Path, utts: list[dict]) -> None:
    lines = []
    for i, u in enumerate(utts):
        labels = {"text": u["text"], "raw_text": u["text"], "entities": [list(s) for s in u["ner"]],
                  "raw_entities": [list(s) for s in u["ner"]]}  # fmt: skip
        row = {"id": u["id"], "split": "dev", "audio": f"clips/{i:02d}.flac", "duration_s": u["samples"] / SR,
               "voice": {"speaker_id": u["speaker"]}, "task_labels": labels, "tasks": ["asr", "ner"]}  # fmt: skip
        lines.append(json.dumps(row))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")


HF_FEATURES = {
    "id": {"dtype": "string", "_type": "Value"},
    "audio": {"sampling_rate": 16000, "_type": "Audio"},
    "speaker_id": {"dtype": "string", "_type": "Value"},
    "normalized_text": {"dtype": "string", "_type": "Value"},
    "raw_text": {"dtype": "string", "_type": "Value"},
    "normalized_ner": {
        "feature": {"type": {"names": list(NER_TAGS), "_type": "ClassLabel"},
                    "start": {"dtype": "int32", "_type": "Value"}, "length": {"dtype": "int32", "_type": "Value"}},
        "_type": "Sequence",
    },  # fmt: skip
}


def _hf_table(root: Path, utts: list[dict], features: dict = HF_FEATURES):
    import pyarrow as pa

    audio_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    ner_type = pa.struct([("type", pa.list_(pa.int64())), ("start", pa.list_(pa.int32())), ("length", pa.list_(pa.int32()))])
    columns = {
        "id": pa.array([u["id"] for u in utts]),
        "audio": pa.array([{"bytes": (root / "clips" / f"{i:02d}.flac").read_bytes(), "path": f"{i:02d}.flac"}
                           for i, u in enumerate(utts)], type=audio_type),  # fmt: skip
        "speaker_id": pa.array([u["speaker"] for u in utts]),
        "normalized_text": pa.array([u["text"] for u in utts]),
        "raw_text": pa.array([u["text"] for u in utts]),
        "normalized_ner": pa.array([{"type": [NER_TAGS.index(t) for t, _, _ in u["ner"]], "start": [s for _, s, _ in u["ner"]],
                                     "length": [n for _, _, n in u["ner"]]} for u in utts], type=ner_type),  # fmt: skip
    }
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    return pa.table(columns).replace_schema_metadata(meta)


def _write_hf_split(d: Path, table, split: str) -> None:
    """One split as Dataset.save_to_disk writes it: Arrow stream file(s), dataset_info.json, state.json."""
    import pyarrow as pa

    d.mkdir(parents=True)
    with pa.OSFile(str(d / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    info = json.loads(table.schema.metadata[b"huggingface"])["info"]
    (d / "dataset_info.json").write_text(json.dumps({"citation": "", "description": "", **info}))
    state = {"_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_fingerprint": "0" * 16,
             "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
             "_split": split}  # fmt: skip
    (d / "state.json").write_text(json.dumps(state))


def _write_hf(root: Path, utts: list[dict]) -> None:
    hf = root / "hf"
    _write_hf_split(hf / "validation", _hf_table(root, utts), "validation")
    train = [u | {"id": f"ft-{u['id']}"} for u in utts[:2]]
    _write_hf_split(hf / "train", _hf_table(root, train), "train")  # another split, not read for dev
    (hf / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "validation"]}))


def _write_parquet(root: Path, utts: list[dict]) -> None:
    """Hub-style shards; audio as decoded arrays + sampling rate, NER as the SLUE literal in `ner`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = root / "parquet" / "voxpopuli"
    d.mkdir(parents=True)
    for shard, part in enumerate((utts[:12], utts[12:])):
        offset = 0 if shard == 0 else 12
        arrays = [sf.read(root / "clips" / f"{offset + i:02d}.flac", dtype="float32")[0] for i in range(len(part))]
        table = pa.table({
            "id": [u["id"] for u in part],
            "audio": [{"array": a.tolist(), "sampling_rate": SR, "path": None} for a in arrays],
            "text": [u["text"] for u in part],
            "ner": [_ner_literal(u["ner"]) for u in part],
            "speaker_id": [u["speaker"] for u in part],
        })  # fmt: skip
        pq.write_table(table, d / f"validation-{shard:05d}-of-00002.parquet", row_group_size=5)


def _write_lhotse(root: Path, utts: list[dict]) -> None:
    from lhotse import CutSet, MonoCut, Recording, SupervisionSegment

    cuts = []
    for i, u in enumerate(utts):
        rec = Recording.from_file(root / "recordings" / f"rec{i:02d}.flac", recording_id=f"rec{i:02d}")
        duration = u["samples"] / SR
        sup = SupervisionSegment(id=u["id"], recording_id=rec.id, start=0.0, duration=duration, text=u["text"],
                                 speaker=u["speaker"], custom={"normalized_ner": [list(s) for s in u["ner"]]})  # fmt: skip
        cuts.append(MonoCut(id=f"cut-{i:02d}", start=PAD / SR, duration=duration, channel=0, recording=rec,
                            supervisions=[sup]))  # fmt: skip
    CutSet.from_cuts(cuts).to_file(root / "cuts_dev.jsonl.gz")


def _write_kaldi(root: Path, utts: list[dict]) -> None:
    d = root / "kaldi" / "dev"
    d.mkdir(parents=True)
    files = {name: [] for name in ("wav.scp", "segments", "text", "utt2spk", "utt2normalized_ner")}
    for i, u in enumerate(utts):
        files["wav.scp"].append(f"rec{i:02d} {root / 'recordings' / f'rec{i:02d}.flac'}")
        files["segments"].append(f"{u['id']} rec{i:02d} 0.5 {0.5 + u['samples'] / SR}")
        files["text"].append(f"{u['id']} {u['text']}")
        files["utt2spk"].append(f"{u['id']} {u['speaker']}")
        files["utt2normalized_ner"].append(f"{u['id']} {_ner_literal(u['ner'])}")
    for name, lines in files.items():
        (d / name).write_text("\n".join(lines) + "\n")


SPECS = {
    "manifest": "manifest:{root}/manifest.jsonl",
    "hf": "hf:{root}/hf",
    "parquet": "hf:{root}/parquet",
    "lhotse": "lhotse:{root}/cuts_dev.jsonl.gz",
    "kaldi": "kaldi:{root}/kaldi",
}


def _spec(root: Path, name: str) -> str:
    return SPECS[name].format(root=root)


# --- every format reads the same utterances -------------------------------------------------------


@pytest.mark.parametrize("name", list(SPECS))
def test_every_format_gives_the_same_records_and_waveforms(corpus_root, name):
    utts = json.loads((corpus_root / "utts.json").read_text())
    split = read_slue_data("voxpopuli", _spec(corpus_root, name), "dev")
    assert not split.blind and split.missing_audio == () and split.skipped == ()
    assert [r.id for r in split.records] == [u["id"] for u in utts]
    for i, (record, u) in enumerate(zip(split.records, utts)):
        assert record.normalized_text == u["text"] and record.split == "dev"
        assert record.entities() == [(tag, u["text"][s : s + n]) for tag, s, n in u["ner"]]
        if name != "parquet":
            assert record.speaker_id == u["speaker"]
        if i % 7 == 0:  # decoding is the slow part: a third of them
            wav = load_ref(record.audio)
            expected = torch.from_numpy(_clip(i).astype(np.float32) / 32768)
            assert torch.equal(wav, expected), f"{name} {record.id}: {record.audio.describe()}"


def test_cuts_start_inside_their_recording(corpus_root):
    lhotse = read_corpus(_spec(corpus_root, "lhotse"), splits=("dev",))
    kaldi = read_corpus(_spec(corpus_root, "kaldi"))
    for a, b in zip(lhotse.rows, kaldi.rows):
        assert a.audio.path == b.audio.path and a.audio.start_s == b.audio.start_s == 0.5
        assert a.audio.end_s == pytest.approx(b.audio.end_s, abs=1e-9)
    hf = read_corpus(_spec(corpus_root, "hf"), splits=("dev",))
    assert hf.rows[3].audio == AudioRef(path=corpus_root / "hf" / "validation" / "data-00000-of-00001.arrow", row=3)


def test_splits_come_from_the_names_of_their_containers(corpus_root):
    assert [split_of_name(n) for n in ("train", "validation-00000-of-00002", "cuts_train-clean-100.jsonl.gz",
            "slue-voxpopuli_fine-tune", "devel", "test_blind", "cuts")] == [
            "fine-tune", "dev", "fine-tune", "fine-tune", "dev", "test", None]  # fmt: skip
    hf = read_corpus(_spec(corpus_root, "hf"))
    assert hf.splits() == ["fine-tune", "dev"] and len(hf) == 22
    assert len(read_corpus(_spec(corpus_root, "hf"), splits=("fine-tune",))) == 2
    with pytest.raises(SlueDataError, match="has no voxpopuli utterances of the test split"):
        read_slue_data("voxpopuli", _spec(corpus_root, "hf"), "test")


def test_bare_paths_are_detected(corpus_root):
    assert detect_format(corpus_root / "manifest.jsonl") == "manifest"
    assert detect_format(corpus_root / "hf") == "hf"
    assert detect_format(corpus_root / "parquet") == "hf"
    assert detect_format(corpus_root / "cuts_dev.jsonl.gz") == "lhotse"
    assert detect_format(corpus_root / "kaldi") == "kaldi"
    assert detect_format(corpus_root / "kaldi" / "dev") == "kaldi"
    assert detect_format(corpus_root / "nowhere") == "slue"  # its reader says what it expected
    split = read_slue_data("voxpopuli", corpus_root / "kaldi", "dev")
    assert len(split) == 20


def test_training_reads_every_format_into_the_same_utterances(corpus_root):
    reference = read_manifest(corpus_root / "manifest.jsonl")
    cache = AudioCache()
    for name in ("hf", "lhotse", "kaldi"):
        utts = read_manifest(_spec(corpus_root, name), splits=("dev",), tasks=("ner",))
        assert [u.id for u in utts] == [u.id for u in reference]
        for u, ref in zip(utts, reference):
            assert u.split == "dev" and u.tasks == ("asr", "ner")
            assert u.labels["text"] == ref.labels["text"] and u.labels["entities"] == ref.labels["entities"]
            assert u.duration_s == pytest.approx(ref.duration_s, abs=1e-6)
        assert torch.equal(cache.batch(utts[4:6]).wav, cache.batch(reference[4:6]).wav)
        for u in utts[4:6]:
            cache.drop(u)


def test_training_needs_to_know_the_split(corpus_root, tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "wav.scp").write_text(f"a {corpus_root / 'clips' / '00.flac'}\n")
    (d / "text").write_text("a hello\n")
    with pytest.raises(ValueError, match=r"cannot tell the split of 'a': name the split directories"):
        read_manifest(f"kaldi:{d}", splits=("fine-tune",))


# --- bad input: named, or skipped and counted ----------------------------------------------------


def _kaldi_dir(tmp_path: Path, clips: Path, **files: str) -> Path:
    d = tmp_path / "dev"
    d.mkdir()
    base = {"wav.scp": f"r0 {clips / '00.flac'}\nr1 {clips / '01.flac'}\n", "text": "r0 hello there\nr1 good morning\n"}
    for name, text in (base | files).items():
        (d / name).write_text(text)
    return d


def test_a_piped_wav_scp_command_is_refused_and_never_run(corpus_root, tmp_path):
    marker = tmp_path / "ran"
    d = _kaldi_dir(tmp_path, corpus_root / "clips", **{"wav.scp": f"r0 touch {marker} |\nr1 {corpus_root / 'clips' / '01.flac'}\n"})
    with pytest.raises(CorpusError) as e:
        read_corpus(f"kaldi:{d}")
    assert str(e.value) == (
        f"'{d / 'wav.scp'}' line 1: r0: is a piped command ('touch {marker} |'); spokenlm never runs commands "
        "from data files: write the audio to a file and list its path; "
        "--skip-bad (skip_bad=True) leaves bad rows out and counts them"
    )
    corpus = read_corpus(f"kaldi:{d}", skip_bad=True)
    assert [r.id for r in corpus] == ["r1"] and len(corpus.skipped) == 1
    assert not marker.exists()


def test_kaldi_bad_rows_are_named(corpus_root, tmp_path):
    clips = corpus_root / "clips"
    d = _kaldi_dir(
        tmp_path, clips,
        **{"wav.scp": f"r0 {clips / '00.flac'}\nr1 {clips / '01.flac'}\nr2 {tmp_path / 'gone.flac'}\n",
           "segments": "u0 r0 0.0 0.3\nu1 r1 0.2 9.0\nu2 r2 0 1\nu3 r0 0.1 0.4\n",
           "text": "u0 hello\nu1 good morning\nu2 gone\nu4 orphan text\n"},
    )  # fmt: skip
    with pytest.raises(CorpusError) as e:
        read_corpus(f"kaldi:{d}")
    first = f"'{d / 'segments'}' line 3: u2: audio file '{tmp_path / 'gone.flac'}' does not exist (and 3 more bad rows)"
    assert str(e.value).startswith(first)
    corpus = read_corpus(f"kaldi:{d}", skip_bad=True)
    assert [r.id for r in corpus] == ["u0"]
    assert [m.id for m in corpus.missing] == ["u2"]
    assert corpus.skipped == (
        f"'{d / 'segments'}' line 2: u1: segment [0.2, 9] s ends past the end of its recording 'r1' "
        f"({len(_clip(1)) / SR:g} s)",
        f"'{d / 'segments'}' line 4: u3: no text",
        f"'{d / 'text'}' line 4: u4: has text but no audio (not in wav.scp or segments)",
    )
    assert corpus.rows[0].audio == AudioRef(path=clips / "00.flac", start_s=0.0, end_s=0.3)


def test_lhotse_bad_cuts_are_named(corpus_root, tmp_path):
    import gzip

    with gzip.open(corpus_root / "cuts_dev.jsonl.gz", "rt") as f:
        cuts = [json.loads(line) for line in f]
    cuts[0]["supervisions"][0]["duration"] = 5.0  # past the end of its 1.6 s recording
    cuts[1]["recording"]["sources"][0] = {"type": "command", "channels": [0], "source": f"touch {tmp_path / 'ran'}"}
    cuts[2]["supervisions"][0]["text"] = None
    cuts[3]["recording"]["sources"][0]["source"] = str(tmp_path / "gone.flac")
    path = tmp_path / "cuts_dev.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in cuts[:5]))
    with pytest.raises(CorpusError, match=r"cuts_dev.jsonl' line 4: cut-03: audio file '.*gone.flac' does not exist"):
        read_corpus(f"lhotse:{path}")
    corpus = read_corpus(path, skip_bad=True)
    assert [r.id for r in corpus] == [cuts[4]["supervisions"][0]["id"]] and [m.id for m in corpus.missing] == ["cut-03"]
    rec0 = cuts[0]["recording"]["duration"]
    assert corpus.skipped == (
        f"'{path}' line 1: {cuts[0]['supervisions'][0]['id']}: segment [0.5, 5.5] s ends past the end of its "
        f"recording 'rec00' ({rec0:g} s)",
        f"'{path}' line 2: cut-01: recording 'rec01' is a command ('touch {tmp_path / 'ran'}'); spokenlm never runs "
        "commands from data files: write the audio to a file and name that",
        f"'{path}' line 3: {cuts[2]['supervisions'][0]['id']}: no text",
    )
    assert not (tmp_path / "ran").exists()


def test_hf_unknown_layouts_and_bad_rows_are_named(corpus_root, tmp_path):
    import pyarrow as pa

    utts = json.loads((corpus_root / "utts.json").read_text())[:3]
    meta = _hf_table(corpus_root, utts).schema.metadata  # pyarrow's column edits drop it
    table = _hf_table(corpus_root, utts).rename_columns(["id", "wav", "speaker_id", "normalized_text", "raw_text",
                                                         "normalized_ner"]).replace_schema_metadata(meta)  # fmt: skip
    _write_hf_split(tmp_path / "no-audio", table, "validation")
    with pytest.raises(SlueDataError) as e:
        read_slue_data("voxpopuli", f"hf:{tmp_path / 'no-audio'}", "dev")
    assert str(e.value) == (
        f"'{tmp_path / 'no-audio' / 'data-00000-of-00001.arrow'}' has an unknown column layout: no audio column "
        "('audio', or one of type Audio); it has: id, wav, speaker_id, normalized_text, raw_text, normalized_ner"
    )
    table = _hf_table(corpus_root, utts)
    texts = table.column("normalized_text").to_pylist()
    texts[1] = None
    table = table.set_column(3, "normalized_text", pa.array(texts)).replace_schema_metadata(meta)
    _write_hf_split(tmp_path / "no-text", table, "validation")
    with pytest.raises(SlueDataError, match=r"data-00000-of-00001.arrow' row 1: .*_1: no text; --skip-bad"):
        read_slue_data("voxpopuli", f"hf:{tmp_path / 'no-text'}", "dev")
    split = read_slue_data("voxpopuli", f"hf:{tmp_path / 'no-text'}", "dev", skip_bad=True)
    assert len(split) == 2 and len(split.skipped) == 1 and split.skipped[0].endswith(f"{utts[1]['id']}: no text")

    no_ner = _hf_table(corpus_root, utts).drop_columns(["normalized_ner"]).replace_schema_metadata(meta)
    _write_hf_split(tmp_path / "asr-only", no_ner, "validation")
    with pytest.raises(SlueDataError, match="unknown column layout for voxpopuli dev: no normalized_ner labels"):
        read_slue_data("voxpopuli", f"hf:{tmp_path / 'asr-only'}", "dev")


def test_voxceleb_columns_of_the_hub_cut_the_audio(corpus_root, tmp_path):
    import pyarrow as pa

    utts = json.loads((corpus_root / "utts.json").read_text())[:3]
    audio_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    features = {"sentiment": {"names": ["Negative", "Neutral", "Positive", "<mixed>"], "_type": "ClassLabel"}}
    table = pa.table({
        "id": [u["id"] for u in utts],
        "audio": pa.array([{"bytes": (corpus_root / "recordings" / f"rec{i:02d}.flac").read_bytes(), "path": None}
                           for i in range(3)], type=audio_type),  # fmt: skip
        "normalized_text": [u["text"] for u in utts],
        "sentiment": [2, 0, 3],
        "start_second": [0.5, 0.5, 0.5],
        "end_second": [0.5 + u["samples"] / SR for u in utts],
    }).replace_schema_metadata({b"huggingface": json.dumps({"info": {"features": features}}).encode()})  # fmt: skip
    _write_hf_split(tmp_path / "voxceleb", table, "validation")
    split = read_slue_data("voxceleb", f"hf:{tmp_path / 'voxceleb'}", "dev")
    assert [r.sentiment for r in split.records] == ["Positive", "Negative"]
    assert split.skipped == (f"{utts[2]['id']}: sentiment '<mixed>' is not one of Negative, Neutral, Positive",)
    wav = load_ref(split.records[1].audio)
    assert torch.equal(wav, torch.from_numpy(_clip(1).astype(np.float32) / 32768))


def test_unsupported_suites_and_formats_are_refused(corpus_root, tmp_path):
    with pytest.raises(SlueDataError, match="suite 'hvb' is read from the official SLUE download only"):
        read_slue_data("hvb", _spec(corpus_root, "kaldi"), "dev")
    (tmp_path / "odd.jsonl").write_text('{"foo": 1}\n')
    with pytest.raises(CorpusError, match="cannot tell the format of .*odd.jsonl'; name it"):
        read_corpus(tmp_path / "odd.jsonl")
    with pytest.raises(CorpusError, match="is not a Kaldi data dir: no wav.scp"):
        read_corpus(f"kaldi:{tmp_path}")


# --- `spokenlm eval slue`: the same predictions and metrics from every format ---------------------


def _predictions(corpus_root: Path, name: str, worker) -> tuple[dict, dict]:
    """The job's own pieces, in process: read, predict each item as a pool worker does, score."""
    from pipelines.slue_eval import _item
    from spokenlm.slue.scoring import score

    split = read_slue_data("voxpopuli", _spec(corpus_root, name), "dev")
    rows = {r.id: worker.predict(_item("voxpopuli", r)) for r in split.records_with_audio()}
    return rows, score("voxpopuli", split, rows)


def _comparable_row(row: dict) -> dict:
    """A prediction row less where its audio was read from and how long that took."""
    records = {task: {k: v for k, v in rec.items() if k not in ("path", "timing_ms")} for task, rec in row["records"].items()}
    return row | {"records": records}


@pytest.mark.slow
def test_every_format_gives_identical_eval_predictions_and_metrics(corpus_root, tiny_bundle):
    from pipelines.slue_eval import SlueWorker
    from spokenlm.lm import GenerationConfig

    worker = SlueWorker(model_dir=str(tiny_bundle), suite="voxpopuli",
                        generation=GenerationConfig(strategy="sample", seed=0, max_new_tokens=8))  # fmt: skip
    reference, reference_metrics = _predictions(corpus_root, "manifest", worker)
    assert len(reference) == 20 and not any(r["error"] for r in reference.values())
    texts = {r["records"]["asr"]["text"] for r in reference.values()}
    assert len(texts) > 1  # the audio reaches the model: predictions differ by utterance
    expected = {k: _comparable_row(v) for k, v in reference.items()}
    drop = ("source", "model")
    for name in ("hf", "parquet", "lhotse", "kaldi"):
        rows, metrics = _predictions(corpus_root, name, worker)
        assert {k: _comparable_row(v) for k, v in rows.items()} == expected, name
        assert {k: v for k, v in metrics.items() if k not in drop} == {
            k: v for k, v in reference_metrics.items() if k not in drop
        }, name


@pytest.mark.slow
def test_eval_slue_command_reads_a_kaldi_dir_and_counts_skipped_rows(corpus_root, tiny_bundle, tmp_path, capsys):
    """`spokenlm eval slue --data kaldi:DIR` end to end on Ray: a bad row stops it with one line; with
    --skip-bad the row is left out and counted, the rest predicted and scored."""
    ray = pytest.importorskip("ray")
    from pipelines.slue_eval import eval_main

    d = tmp_path / "kaldi" / "dev"
    d.mkdir(parents=True)
    src = corpus_root / "kaldi" / "dev"
    for name in ("wav.scp", "segments", "utt2spk", "utt2normalized_ner"):
        lines = (src / name).read_text().splitlines()[:4]
        (d / name).write_text("\n".join(lines) + "\n")
    text = (src / "text").read_text().splitlines()[:4]
    (d / "text").write_text("\n".join(text[:3]) + "\n")  # the 4th utterance has no text
    args = ["slue", "--suite", "voxpopuli", "--data", f"kaldi:{tmp_path / 'kaldi'}", "--model", str(tiny_bundle),
            "--out", str(tmp_path / "out"), "--strategy", "greedy", "--max-new-tokens", "4", "--batch-size", "2",
            "--num-cpus-per-worker", "0.5", "--no-report"]  # fmt: skip
    assert eval_main(args) == 2
    err = capsys.readouterr().err
    assert f"segments' line 4: {text[3].split()[0]}: no text; --skip-bad (skip_bad=True) leaves bad rows out" in err
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 2**20)
    try:
        assert eval_main(args + ["--skip-bad"]) == 0
    finally:
        if started:
            ray.shutdown()
    out = capsys.readouterr().out
    assert "3 utterances (0 failed, 0 missing audio, 1 skipped)" in out
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["num_scored"] == 3 and len(metrics["skipped"]) == 1 and metrics["skipped"][0].endswith(": no text")
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(line.split()[0] for line in text[:3])
