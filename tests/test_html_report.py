"""Issue 11 item 5: `qcompiler report MODEL --calibration DATA --data EVAL -o DIR` (report.html + report.json),
with a layer made worst on purpose through the plan, and the HTML opened in headless Chromium."""
import json
import shutil

import jsonschema
import keras
import numpy as np
import pytest

import qcompiler

from qcompiler.cli import main
from qcompiler.validate.html_report import worst
from tests.test_plan import _branchy_model

SCHEMA = json.loads(open("schemas/layer-report.schema.json").read())


def _chain_model() -> keras.Model:
    keras.utils.set_random_seed(3)
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv_a")(inp)
    x = keras.layers.Conv2D(6, 3, padding="same", name="conv_b")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="tanh", name="conv_c")(x)
    x = keras.layers.Flatten(name="flat")(x)
    return keras.Model(inp, keras.layers.Dense(5, name="logits")(x))


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    _chain_model().save(folder / "m.keras")
    rng = np.random.default_rng(1)
    np.save(folder / "calib.npy", rng.normal(size=(24, 8, 8, 3)).astype(np.float32))
    np.save(folder / "eval.npy", rng.normal(size=(12, 8, 8, 3)).astype(np.float32))
    assert main(["report", str(folder / "m.keras"), "--calibration", str(folder / "calib.npy"), "--data",
                 str(folder / "eval.npy"), "-o", str(folder / "plain")]) == 0
    plain = json.loads((folder / "plain" / "report.json").read_text())
    # the tensor that is best in the plain report gets a range clipped to 5% of its span in the plan
    target = max(plain["tensors"], key=lambda t: t["local_snr_db"] if t["layer"] != "flat" else -1e9)
    assert main(["calibrate", str(folder / "m.keras"), "--calibration", str(folder / "calib.npy"),
                 "-o", str(folder / "plan.json")]) == 0
    plan = json.loads((folder / "plan.json").read_text())
    entry = next(t for t in plan["tensors"] if t["tensor"] == target["tensor"] and t["kind"] == "activation")
    lo, hi = entry["range"]
    entry["range"] = [lo * 0.05, hi * 0.05]
    (folder / "plan.json").write_text(json.dumps(plan))
    assert main(["report", str(folder / "m.keras"), "--calibration", str(folder / "calib.npy"), "--data",
                 str(folder / "eval.npy"), "--plan", str(folder / "plan.json"), "-o", str(folder / "clipped")]) == 0
    return folder, plain, target


def test_report_files_validate_and_the_clipped_layer_ranks_first(reported):
    folder, plain, target = reported
    for name in ("plain", "clipped"):
        assert (folder / name / "report.html").stat().st_size > 1000
        body = json.loads((folder / name / "report.json").read_text())
        jsonschema.validate(body, SCHEMA)
        assert body["samples"] == 12 and body["simulator"]
    clipped = json.loads((folder / "clipped" / "report.json").read_text())
    assert worst(plain["tensors"], 1)[0]["tensor"] != target["tensor"]
    assert worst(clipped["tensors"], 1)[0]["tensor"] == target["tensor"]
    assert clipped["output_snr_db"] < plain["output_snr_db"]
    suggestion = clipped["keep_float_suggestion"]
    assert suggestion["candidates"] and suggestion["baseline_output_snr_db"] == clipped["output_snr_db"]
    if suggestion["layers"]:  # measured, and never worse than the baseline
        assert suggestion["output_snr_db"] > suggestion["baseline_output_snr_db"]
    html = (folder / "clipped" / "report.html").read_text()
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html
    assert ("<svg" in html) == (shutil.which("dot") is not None)


def test_keep_float_suggestion_buys_back_the_clipped_layer(reported):
    folder, _, target = reported
    clipped = json.loads((folder / "clipped" / "report.json").read_text())
    suggestion = clipped["keep_float_suggestion"]
    graph = qcompiler.float_graph(str(folder / "m.keras"))
    readers = [u.node.layer for u in graph.value(target["tensor"]).uses]
    # keeping the clipped tensor's producer and readers float leaves it float: that buys the SQNR back
    assert {target["layer"], *readers} <= set(suggestion["layers"])
    assert suggestion["output_snr_db"] > suggestion["baseline_output_snr_db"] + 10
    best = suggestion["candidates"][0]
    assert best["gain_db"] > 0 and set(best["layers"]) <= set(suggestion["layers"])


def test_report_html_in_headless_chromium(reported, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install "
                                     "playwright; .ci/run installs it)")
    if shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium; .ci/run installs it)")
    folder, _, _ = reported
    page_file = folder / "clipped" / "report.html"
    body = json.loads((folder / "clipped" / "report.json").read_text())
    errors, requests = [], []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))

        def block(route):
            if not route.request.url.startswith(("file:", "data:")):
                requests.append(route.request.url)
                route.abort()
            else:
                route.continue_()

        page.route("**/*", block)
        page.goto(page_file.as_uri())
        page.wait_for_load_state("load")
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth])")
        cells = page.eval_on_selector_all("#tensors tbody tr", "rows => rows.map(r => "
                                          "Array.from(r.cells).map(c => c.textContent))")
        suggestion = page.text_content("#suggestion")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert not errors, errors
    assert not requests, requests
    assert len(images) >= 3 and all(complete and width > 0 for complete, width in images), images
    assert [c[0] for c in cells] == [t["tensor"] for t in body["tensors"]]
    for row, tensor in zip(cells, body["tensors"]):
        snr = tensor["local_snr_db"]
        assert row[6] == (snr if isinstance(snr, str) else f"{snr:.2f}")
    assert suggestion.split(",")[0] in ("(none: no layer kept float improved the output)",
                                        *body["keep_float_suggestion"]["layers"])
    assert (tmp_path / "report.png").stat().st_size > 0
