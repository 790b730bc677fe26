"""`spokenlm eval slue` on SLUE directories laid out by hand as the official downloads unpack.

slue-voxpopuli/slue-voxpopuli_dev.tsv + dev/<id>.ogg and slue-voxceleb/slue-voxceleb_dev.tsv +
dev_raw/<id>.flac (cut to [start_second, end_second]); audio from the example clips and espeak-ng.
One Ray session for the module; every job runs one pool actor on half a CPU.
"""

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from pipelines.slue_eval import SlueEvalConfig, SlueWorker, eval_main, load_predictions, run_slue_eval
from spokenlm.lm import GenerationConfig
from spokenlm.model import locate_text
from spokenlm.output import RECORD_KEYS
from spokenlm.slue import metrics as M
from spokenlm.slue.readers import SlueDataError, read_voxpopuli
from spokenlm.slue.scoring import score
from spokenlm.slue.submission import write_submission

REPO = Path(__file__).resolve().parents[2]
# Seeded sampling: the untrained bundle's greedy output is the same dots for every clip; sampled text
# differs per utterance, and is still reproducible per utterance (seeded per generate call).
SAMPLED = GenerationConfig(strategy="sample", seed=0, max_new_tokens=8)

# (id, raw_text, entities as (tag, phrase)); audio: "clip0"/"clip1" = an example clip, else espeak-ng
VOXPOPULI = [
    ("20150518-0900-PLENARY-15-en_20150518-18:48:27_2", "We all agreed at the last session in Strasbourg.",
     [("GPE", "strasbourg")]),
    ("20131007-0900-PLENARY-16-en_20131007-21:41:16_1", "The European Commission met in Brussels on Monday.",
     [("ORG", "european commission"), ("GPE", "brussels"), ("DATE", "monday")]),
    ("20160913-0900-PLENARY-4-en_20160913-10:02:11_7", "He was not an ill disposed young man.", []),
    ("20120703-0900-PLENARY-5-en_20120703-13:57:03_3", "He might even have been made amiable himself.", []),
    ("20170116-0900-PLENARY-12-en_20170116-19:41:32_5", "Paris said yes and Paris said no.",
     [("GPE", "paris"), ("GPE", "paris")]),
    ("20180611-0900-PLENARY-9-en_20180611-17:13:46_4", "The United Nations recording was lost.",
     [("ORG", "united nations")]),
]  # fmt: skip
MISSING = VOXPOPULI[-1][0]


def _speak(text: str) -> np.ndarray:
    """espeak-ng at 16 kHz, float32 mono."""
    import torch
    import torchaudio

    out = subprocess.run(["espeak-ng", "-v", "en-us", "-s", "160", "--stdout", text], check=True, capture_output=True)
    import io

    wav, sr = sf.read(io.BytesIO(out.stdout), dtype="float32")
    return torchaudio.functional.resample(torch.from_numpy(wav), sr, 16000).numpy()


@pytest.fixture(scope="module")
def slue_root(tmp_path_factory, example_clips) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    root = tmp_path_factory.mktemp("slue")
    vp = root / "slue-voxpopuli"
    (vp / "dev").mkdir(parents=True)
    rows = []
    for i, (utt, raw, entities) in enumerate(VOXPOPULI):
        text = M.normalize_asr_text(raw.lower().replace(",", ""))
        spans, raw_spans, cursor, raw_cursor = [], [], {}, {}
        for tag, phrase in entities:  # the k-th mention of a phrase is the k-th span
            start = text.index(phrase, cursor.get(phrase, 0))
            raw_start = raw.lower().index(phrase, raw_cursor.get(phrase, 0))
            cursor[phrase], raw_cursor[phrase] = start + len(phrase), raw_start + len(phrase)
            spans.append([tag, start, len(phrase)])
            raw_spans.append([tag, raw_start, len(phrase)])
        rows.append([utt, raw, text, f"spk{i}", "dev", str(raw_spans) if raw_spans else "None",
                     str(spans) if spans else "None"])  # fmt: skip
        if utt == MISSING:
            continue
        if i in (2, 3):  # the example clips say exactly these sentences
            wav, sr = sf.read(example_clips[i - 2], dtype="float32")
        else:
            wav, sr = _speak(text), 16000
        sf.write(vp / "dev" / f"{utt}.ogg", wav, sr, format="OGG", subtype="VORBIS")
    header = ["id", "raw_text", "normalized_text", "speaker_id", "split", "raw_ner", "normalized_ner"]
    _write_tsv(vp / "slue-voxpopuli_dev.tsv", header, rows)

    vc = root / "slue-voxceleb"
    (vc / "dev_raw").mkdir(parents=True)
    celeb = [
        ("id10012_0AXjxNXiEzo_00001", "i really loved working on that film", "Positive"),
        ("id10059_229vKIGbxrI_00002", "the traffic this morning was terrible", "Negative"),
        ("id10103_3X4T9Ll8mhg_00003", "we moved to the city last spring", "Neutral"),
        ("id10229_5r0dWxy17C8_00004", "nobody could agree on the ending", "<mixed>"),  # left out by the reader
    ]
    rows = []
    for utt, text, sentiment in celeb:
        speech = _speak(text)
        pad = np.zeros(8000, dtype=np.float32)  # 0.5 s before and after: the TSV cut removes it
        sf.write(vc / "dev_raw" / f"{utt}.flac", np.concatenate([pad, speech, pad]), 16000, format="FLAC")
        rows.append([utt, text, utt.split("_")[0], "dev", sentiment, "0.5", f"{0.5 + len(speech) / 16000:.3f}"])
    header = ["id", "normalized_text", "speaker_id", "split", "sentiment", "start_second", "end_second"]
    _write_tsv(vc / "slue-voxceleb_dev.tsv", header, rows)
    _phase2(root)
    return root


def _phase2(root: Path) -> None:
    """SLUE Phase-2 layouts (HVB, TED, SQA-5, VoxPopuli NEL), two or three items each."""
    hvb = root / "slue-hvb"
    (hvb / "dev").mkdir(parents=True)
    rows = []
    for i, (text, acts) in enumerate([("i lost my card yesterday", "['statement_problem']"),
                                      ("okay thank you so much", "['acknowledge', 'thanks']")]):  # fmt: skip
        speech = _speak(text)
        ms = int(len(speech) / 16)
        sf.write(hvb / "dev" / f"0a1b_{1000 * i}_{1000 * i + ms}.wav", speech, 16000)
        rows.append(["0a1b", str(i), text, str(i), "1", "caller", str(1000 * i), str(ms), "replace_card", acts, "dev"])
    header = ["issue_id", "speaker_id", "text", "utt_index", "channel", "role", "start_ms", "duration_ms", "intent",
              "dialog_acts", "split"]  # fmt: skip
    _write_tsv(hvb / "slue-hvb_dev.tsv", header, rows)

    ted = root / "slue-ted_dev"
    (ted / "dev").mkdir(parents=True)
    talk = "today i want to talk about why small gardens matter for cities"
    sf.write(ted / "dev" / "1234.flac", _speak(talk), 16000, format="FLAC")
    row = ["1234", talk, "Jane Doe", "dev", "Small gardens", "Why small gardens matter for cities."]
    _write_tsv(ted / "slue-ted_dev.tsv", ["id", "transcript", "speaker", "split", "title", "abstract"], [row])

    sqa = root / "slue-sqa5"
    for sub in ("question", "document", "word2time"):
        (sqa / "dev" / sub).mkdir(parents=True)
    document = "orwell wrote the book in scotland"
    sf.write(sqa / "dev" / "document" / "d1.wav", _speak(document), 16000)
    (sqa / "dev" / "word2time" / "d1.txt").write_text(
        "".join(f"{i}\t{w}\t{0.4 * i:.1f}\t{0.4 * i + 0.4:.1f}\n" for i, w in enumerate(document.split()))
    )
    rows = []
    for q, question in (("q1", "who wrote the book"), ("q2", "where was it written"), ("q3", "")):
        sf.write(sqa / "dev" / "question" / f"{q}.wav", _speak(question or "hm"), 16000)
        answer = "[['orwell', 0.0, 0.4]]" if q != "q2" else "[['scotland', 2.0, 2.4]]"
        rows.append([q, question, question, "s1", "d1", document, document, "s9", "orwell", answer])
    _write_tsv(sqa / "slue-sqa5_dev.tsv", ["question_id", "raw_question_text", "normalized_question_text",
               "question_speaker_id", "document_id", "raw_document_text", "normalized_document_text",
               "document_speaker_id", "normalized_answer", "answer_spans"], rows)  # fmt: skip

    nel = root / "slue-voxpopuli" / "nel"
    nel.mkdir()
    first, second = VOXPOPULI[0][0], VOXPOPULI[2][0]
    words = {first: [["", 0.0, 0.2], ["we", 0.2, 0.4], ["all", 0.4, 0.6], ["#strasbourg", 2.0, 2.6]],
             second: [["he", 0.1, 0.3], ["was", 0.3, 0.6]]}  # fmt: skip
    (nel / "dev_tagged_word_alignments.json").write_text(json.dumps(words))
    entities = f"id,entity_phrase,start,end,entity_label\n{first},strasbourg,2.0,2.6,GPE\n"
    (nel / "dev_entity_alignments.csv").write_text(entities)


def _write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 2**20)
    yield ray
    ray.shutdown()


def _config(slue_root, tiny_bundle, out, **kw) -> SlueEvalConfig:
    base = dict(suite="voxpopuli", data_dir=str(slue_root), model_dir=str(tiny_bundle), out_dir=str(out),
                batch_size=2, num_cpus_per_worker=0.5, generation=SAMPLED)  # fmt: skip
    return SlueEvalConfig(**(base | kw))


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def _comparable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in ("model", "source")}


@pytest.fixture(scope="module")
def voxpopuli_run(ray_session, slue_root, tiny_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("vp-full")
    config = _config(slue_root, tiny_bundle, out, compare_uncompressed=True, probe_utterances=4)
    return out, run_slue_eval(config)


# --- the full job ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_voxpopuli_job_writes_each_id_once_and_scores_like_slue_metrics(voxpopuli_run, slue_root):
    out, summary = voxpopuli_run
    ids = [utt for utt, _, _ in VOXPOPULI if utt != MISSING]
    assert summary.complete and summary.total == len(ids) and summary.missing_audio == (MISSING,)
    rows = _rows(out)
    assert sorted(r["id"] for r in rows) == sorted(ids)  # every id exactly once
    for row in rows:  # one record per task, as `spokenlm run --json` prints it
        assert list(row["records"]) == ["asr", "ner"]
        assert all(tuple(record) == RECORD_KEYS for record in row["records"].values())

    # metrics.json == an independent computation from predictions.jsonl with spokenlm.slue.metrics
    split = read_voxpopuli(slue_root, "dev")
    by_id = {r["id"]: r["records"] for r in rows}
    records = [r for r in split.records if r.id != MISSING]
    wer = M.word_error_rate([M.normalize_asr_text(r.normalized_text) for r in records],
                            [M.normalize_asr_text(by_id[r.id]["asr"]["text"]) for r in records])  # fmt: skip
    ner = M.ner_report([r.entities() for r in records],
                       [[(e["tag"], e["text"]) for e in by_id[r.id]["ner"]["entities"]] for r in records])  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["headline"]["wer"] == pytest.approx(wer.wer)
    assert metrics["headline"]["ner_f1"] == pytest.approx(ner["combined-standard"].micro.f1)
    assert metrics["details"]["wer"]["errors"] == wer.errors
    assert metrics["details"]["ner"]["raw-standard"]["num_reference"] == 6  # repeated "paris" counts twice
    missing_path = slue_root / "slue-voxpopuli" / "dev" / f"{MISSING}.ogg"
    assert metrics["missing_audio"] == [{"id": MISSING, "path": str(missing_path)}]
    assert metrics["num_scored"] == len(ids) and metrics["failed"] == []

    # the official submission TSV: id pred_text pred_ner pred_sentiment, "none" where not applicable
    with (out / "submission.tsv").open(newline="") as f:
        table = list(csv.reader(f, delimiter="\t"))
    assert table[0] == ["id", "pred_text", "pred_ner", "pred_sentiment"]
    assert [row[0] for row in table[1:]] == ids
    for utt, text, ner_cell, sentiment in table[1:]:
        assert text == by_id[utt]["asr"]["text"] and sentiment == "none"
        assert ner_cell == repr([[e["tag"], e["text"]] for e in by_id[utt]["ner"]["entities"]])


@pytest.mark.slow
def test_report_has_every_stage_and_its_plots(voxpopuli_run):
    out, _ = voxpopuli_run
    report = (out / "report.md").read_text()
    for heading in ("## 1. Encoder stage", "## 2. CTC stage", "## 3. Compression stage", "## 4. LLM stage",
                    "## 5. Per-stage latency", "worst utterances"):  # fmt: skip
        assert heading in report
    data = json.loads((out / "report.json").read_text())
    assert set(data["plots"]) == {"latency", "compression", "quality", "probes"}
    for name in data["plots"].values():
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({name})" in report
    assert {"wer", "cer"} <= set(data["ctc"]) and "uncompressed_llm_wer" in data["compression"]
    assert len(data["encoder"]["probes"]) == 3  # tiny wav2vec 2.0: input + 2 layers
    assert set(data["latency"]["stages"]) == {"load_audio", "encoder", "compress", "adapter", "llm"}
    assert len(data["worst"]) == 5 and data["worst"][0]["error"] >= data["worst"][-1]["error"]


# --- interruption and worker failure ---------------------------------------------------------------


class Interrupted(Exception):
    pass


@pytest.mark.slow
def test_an_interrupted_job_resumes_to_the_same_metrics(voxpopuli_run, slue_root, tiny_bundle, tmp_path):
    full_out, full = voxpopuli_run
    seen = []

    def stop_after_two(row):
        seen.append(row["id"])
        if len(seen) == 2:
            raise Interrupted

    config = _config(slue_root, tiny_bundle, tmp_path, batch_size=1, report=False)
    with pytest.raises(Interrupted):
        run_slue_eval(config, on_row=stop_after_two)
    assert [r["id"] for r in _rows(tmp_path)] == seen and not (tmp_path / "metrics.json").exists()
    with (tmp_path / "predictions.jsonl").open("a") as f:
        f.write('{"id": "' + VOXPOPULI[0][0] + '", "text": "torn mid-wr')  # killed while writing a row

    summary = run_slue_eval(config)
    assert summary.complete and summary.written == summary.total - 2
    rows = _rows(tmp_path)
    assert len(rows) == len({r["id"] for r in rows}) == summary.total
    resumed = json.loads((tmp_path / "metrics.json").read_text())
    assert _comparable(resumed) == _comparable(json.loads((full_out / "metrics.json").read_text()))

    assert run_slue_eval(config).written == 0  # nothing left to do: no duplicates on a third run


CRASH_ID = VOXPOPULI[2][0]


@pytest.mark.slow
def test_a_worker_killed_mid_run_still_yields_every_id_exactly_once(voxpopuli_run, slue_root, tiny_bundle, tmp_path):
    marker = tmp_path / "crashed"

    class CrashOnceWorker(SlueWorker):  # a local class: cloudpickle ships it, marker path included, by value
        """Ends its own actor process on the first batch holding CRASH_ID, once (marker file)."""

        def __call__(self, batch):
            if CRASH_ID in [str(i) for i in batch["id"]] and not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)  # no cleanup, no exception: as a SIGKILL or an OOM kill would end it
            return super().__call__(batch)

    full_out, _ = voxpopuli_run
    out = tmp_path / "out"
    seen = []
    summary = run_slue_eval(_config(slue_root, tiny_bundle, out, batch_size=1, report=False),
                            worker=CrashOnceWorker, on_row=lambda row: seen.append(row["id"]))  # fmt: skip
    assert marker.exists()  # the actor did die, mid-run
    assert summary.complete
    rows = _rows(out)
    assert sorted(r["id"] for r in rows) == sorted(seen) == sorted({r["id"] for r in rows})
    assert len(rows) == summary.total
    metrics = json.loads((out / "metrics.json").read_text())
    assert _comparable(metrics) == _comparable(json.loads((full_out / "metrics.json").read_text()))


# --- VoxCeleb: cuts, sentiment, the submission's sentiment column ----------------------------------


@pytest.mark.slow
def test_voxceleb_job_cuts_clips_and_scores_sentiment(ray_session, slue_root, tiny_bundle, tmp_path):
    summary = run_slue_eval(_config(slue_root, tiny_bundle, tmp_path, suite="voxceleb", report=False))
    assert summary.complete and summary.total == 3
    rows = {r["id"]: r for r in _rows(tmp_path)}
    tsv = (slue_root / "slue-voxceleb" / "slue-voxceleb_dev.tsv").read_text().splitlines()[1:4]
    for line in tsv:
        utt, start, end = line.split("\t")[0], *map(float, line.split("\t")[5:7])
        assert rows[utt]["records"]["asr"]["duration_s"] == pytest.approx(end - start, abs=1e-3)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    refs = ["Positive", "Negative", "Neutral"]
    hyps = [rows[line.split("\t")[0]]["records"]["sentiment"]["sentiment"] for line in tsv]
    assert metrics["headline"]["sentiment_f1"] == pytest.approx(M.sentiment_scores(refs, hyps).macro.f1)
    skipped = "id10229_5r0dWxy17C8_00004: sentiment '<mixed>' is not one of Negative, Neutral, Positive"
    assert metrics["skipped"] == [skipped]
    header, *lines = (tmp_path / "submission.tsv").read_text().splitlines()
    assert header == "id\tpred_text\tpred_ner\tpred_sentiment"
    assert all(line.split("\t")[2] == "none" and line.split("\t")[3] in ("Negative", "Neutral", "Positive", "none")
               for line in lines)  # fmt: skip


# --- fast checks: no Ray ---------------------------------------------------------------------------


def test_score_joins_each_prediction_to_its_reference(slue_root, tmp_path):
    """Planted predictions, hand-computed scores: WER, NER with a repeated entity, a failed row."""
    split = read_voxpopuli(slue_root, "dev")
    ids = [utt for utt, _, _ in VOXPOPULI]
    def row(text: str, entities: list[tuple[str, str]]) -> dict:  # the fields of each task's record that count
        return {"records": {"asr": {"text": text}, "ner": {"entities": [{"tag": t, "text": p} for t, p in entities]}}}

    rows = {
        ids[0]: row("we all agreed at the last session in strasbourg.",  # "." is dropped by normalize_asr_text
                    [("GPE", "strasbourg")]),
        ids[1]: row("the european commission met in brussel on monday",  # 1 substitution
                    [("ORG", "european commission"), ("GPE", "brussel")]),
        ids[2]: {"error": "AudioError: could not decode"},  # scored as empty: 8 deletions
        ids[3]: row("he might even have been made amiable himself", [("PERSON", "he")]),
        ids[4]: row("paris said yes and paris said no", [("GPE", "paris")]),
    }  # fmt: skip
    rows = {k: v | {"id": k} for k, v in rows.items()}
    metrics = score("voxpopuli", split, rows)
    assert metrics["headline"]["wer"] == pytest.approx(100 * 9 / 40)  # 9 + 8 + 8 + 8 + 7 reference words
    # 5 predicted, 6 referenced (paris twice), 3 hits: P 3/5, R 3/6, F1 6/11
    assert metrics["headline"]["ner_f1"] == pytest.approx(100 * 6 / 11)
    assert metrics["headline"]["ner_f1_raw"] == pytest.approx(100 * 6 / 11)
    assert metrics["failed"] == [{"id": ids[2], "error": "AudioError: could not decode"}]
    assert metrics["num_scored"] == 5 and [m["id"] for m in metrics["missing_audio"]] == [MISSING]

    write_submission(tmp_path / "s.tsv", "voxpopuli", split.records_with_audio(), rows)
    lines = (tmp_path / "s.tsv").read_text().splitlines()
    assert lines[2] == f"{ids[1]}\tthe european commission met in brussel on monday\t" \
                       "[['ORG', 'european commission'], ['GPE', 'brussel']]\tnone"  # fmt: skip
    assert lines[3] == f"{ids[2]}\t\tnone\tnone"  # a failed row predicts nothing


@pytest.mark.parametrize("suite", ["hvb", "ted", "sqa5", "nel"])
def test_phase2_suites_predict_score_submit_and_report_in_process(suite, slue_root, tiny_bundle, tmp_path):
    """The pool worker's code without Ray: rows, metrics, submission and report for each Phase-2 suite."""
    from pipelines.report import write_report
    from pipelines.slue_eval import _item, _view
    from spokenlm.slue.readers import read_slue

    split = read_slue(suite, slue_root)
    worker = SlueWorker(model_dir=str(tiny_bundle), suite=suite, generation=SAMPLED)
    rows = {r.id: worker.predict(_item(suite, r)) for r in split.records_with_audio()}
    metrics = score(suite, split, rows)
    expected_keys = {"hvb": {"dialog_act_f1"}, "ted": {"rouge1", "rouge2", "rougeL"}, "sqa5": {"frame_f1"},
                     "nel": {"frame_f1", "word_f1"}}[suite]  # fmt: skip
    assert set(metrics["headline"]) == expected_keys
    assert all(0.0 <= v <= 100.0 for v in metrics["headline"].values())
    if suite == "sqa5":  # an empty question is a failed row, not a crashed job
        assert metrics["failed"] == [{"id": "q3", "error": "ValueError: task 'qa' needs a non-empty question"}]
        spans = [rows[q]["records"]["qa"]["answer_span_s"] for q in ("q1", "q2")]
        assert all(span is None or len(span) == 2 for span in spans)
    write_submission(tmp_path / "submission.tsv", suite, split.records_with_audio(), rows)
    header = (tmp_path / "submission.tsv").read_text().splitlines()[0].split("\t")
    assert header[0] == "id" and len(header) >= 2
    views = [_view(suite, r, rows[r.id]) for r in split.records_with_audio()]
    report = write_report(tmp_path, suite=suite, split="dev", model=str(tiny_bundle), metrics=metrics,
                          utterances=views, probes="not requested")  # fmt: skip
    assert "## 6. The" in report.read_text() and (tmp_path / "latency.png").is_file()


def test_load_predictions_cuts_a_torn_last_line(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text('{"id": "a", "text": "x"}\n{"id": "b", "text": "y"}\n{"id": "a", "text": "dup"}\n{"id": "c", "te')
    rows = load_predictions(path)
    assert list(rows) == ["a", "b"] and rows["a"]["text"] == "x"
    assert path.read_text().endswith('{"id": "a", "text": "dup"}\n')  # appending now starts on a clean line
    path.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(SlueDataError, match="predictions.jsonl' line 2 is not a prediction row"):
        load_predictions(path)  # only the last line can be torn; nothing else is dropped silently


def test_an_out_directory_refuses_predictions_of_another_setup(tmp_path, tiny_bundle):
    from pipelines.slue_eval import _check_manifest

    config = _config(tmp_path, tiny_bundle, tmp_path)
    _check_manifest(tmp_path, config, SAMPLED)
    _check_manifest(tmp_path, config, SAMPLED)  # the same run again: resumable
    with pytest.raises(ValueError, match="already holds predictions of another run: split 'dev' \\(now 'test'\\)"):
        _check_manifest(tmp_path, _config(tmp_path, tiny_bundle, tmp_path, split="test"), SAMPLED)
    with pytest.raises(ValueError, match="another run: generation"):
        _check_manifest(tmp_path, config, GenerationConfig(max_new_tokens=8))


def test_locate_text_times_an_answer_by_the_ctc_characters():
    text = "we met in paris today"
    char_times = [(c, i * 0.1, i * 0.1 + 0.05) for i, c in enumerate(text)]
    assert locate_text("paris", char_times) == [1.0, 1.45]
    assert locate_text("pariz", char_times) == [1.0, 1.35]  # the longest match anchors the span
    assert locate_text("", char_times) is None and locate_text("paris", None) is None


def test_eval_main_rejects_a_wrong_data_directory_before_starting_ray(tmp_path, tiny_bundle, capsys):
    code = eval_main(["slue", "--suite", "voxpopuli", "--data", str(tmp_path), "--model", str(tiny_bundle),
                      "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 2
    assert "spokenlm eval: error: no slue-voxpopuli dev split under" in capsys.readouterr().err


def test_eval_main_without_a_model_uses_the_default_bundle(tmp_path, tiny_bundle, capsys, monkeypatch):
    import spokenlm.demo

    monkeypatch.setattr(spokenlm.demo, "default_bundle", lambda on_build=None: tiny_bundle)
    code = eval_main(["slue", "--suite", "voxpopuli", "--data", str(tmp_path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and f"spokenlm eval: model {tiny_bundle}" in err  # the bundle it read, then the data's error
    assert "spokenlm eval: error: no slue-voxpopuli dev split under" in err


def test_eval_main_rejects_a_directory_that_is_not_a_bundle(tmp_path, capsys):
    code = eval_main(["slue", "--suite", "hvb", "--data", str(tmp_path), "--model", str(tmp_path),
                      "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 2
    assert f"{tmp_path} is not a spokenlm bundle: spokenlm.json is missing" in capsys.readouterr().err


def test_rayjob_manifest_is_a_well_formed_kuberay_rayjob():
    docs = list(yaml.safe_load_all((REPO / "k8s" / "rayjob-slue-eval.yaml").read_text()))
    job = next(d for d in docs if d and d.get("kind") == "RayJob")
    assert job["apiVersion"] == "ray.io/v1" and job["metadata"]["name"]
    spec = job["spec"]
    assert spec["entrypoint"].startswith("spokenlm eval slue ")
    for flag in ("--suite", "--data", "--model", "--out", "--workers"):
        assert flag in spec["entrypoint"]
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert "rayStartParams" in head and head["template"]["spec"]["containers"][0]["image"]
    (group,) = cluster["workerGroupSpecs"]
    assert group["groupName"] and 1 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    worker = group["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] >= 1


# --- SIGTERM: the job as a real process ------------------------------------------------------------


@pytest.mark.slow
def test_eval_slue_stops_on_sigterm_with_ray_shut_down_and_a_rerun_finishes(slue_root, tiny_bundle, own_ray, tmp_path):
    """What a RayJob's or a batch scheduler's SIGTERM does: the command exits 130 within seconds, the
    Ray it started is gone (none of its processes left), and the same command again writes the rest."""
    import sys
    import time

    out = tmp_path / "out"
    command = [sys.executable, "-m", "spokenlm.cli", "eval", "slue", "--suite", "voxpopuli", "--data", str(slue_root),
               "--model", str(tiny_bundle), "--out", str(out), "--batch-size", "1", "--num-cpus-per-worker", "0.5",
               "--no-report"]  # fmt: skip
    predictions = out / "predictions.jsonl"
    proc = own_ray.popen(command)
    end = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < end:
        if predictions.is_file() and predictions.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-2000:]  # still running, one row written
    assert own_ray.processes(), "the job runs on a Ray of its own"
    own_ray.interrupt(proc)
    before = _rows(out)
    ids = [utt for utt, _, _ in VOXPOPULI if utt != MISSING]
    assert 1 <= len(before) < len(ids) and not (out / "metrics.json").exists()

    rerun = subprocess.run(command, env=own_ray.env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert rerun.stdout.startswith(f"{out}: {len(ids)} utterances (0 failed, 1 missing audio, 0 skipped)")
    rows = _rows(out)
    assert rows[: len(before)] == before  # kept as written, not recomputed
    assert sorted(r["id"] for r in rows) == sorted(ids)  # every id exactly once
    assert own_ray.left_after(15) == []
