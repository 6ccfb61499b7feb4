"""float32 Keras Flatten/Reshape written with a run-time target (SHAPE/STRIDED_SLICE/PACK, write_tflite's default)
against a constant target (runtime_batch_reshapes=False, what qcompiler.compile writes in float32): op count, max
error against Keras, whether the two outputs differ, and XNNPACK latency (benchmarks/zoo.py's latency_in_processes:
4 fresh processes, 5 rounds each, CPU time of the invoking thread; cpu_ratio = run-time / constant form).

    python benchmarks/flatten_ab.py seed_cnn,MobileNet,VGG16,MobileNetV3Small,EfficientNetB0 [result.json]
"""
import os, sys, json, collections, tempfile
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT); sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
WORK = tempfile.mkdtemp(prefix="flatten_ab_")
import numpy as np, keras
import qcompiler
from qcompiler.api import float_graph
from qcompiler.backend.tflite_writer import write_tflite
from tests.zoo import keras_application, logits_model, keras_application_inputs, seed_cnn
from pathlib import Path
import zoo as Z
from ai_edge_litert.interpreter import Interpreter
import tflite
out = {}
def ops_of(data):
    m = tflite.Model.GetRootAsModel(data, 0); sg = m.Subgraphs(0)
    names = {v: k for k, v in tflite.BuiltinOperator.__dict__.items() if not k.startswith("_")}
    return collections.Counter(names[max(m.OperatorCodes(sg.Operators(i).OpcodeIndex()).BuiltinCode(), m.OperatorCodes(sg.Operators(i).OpcodeIndex()).DeprecatedBuiltinCode())] for i in range(sg.OperatorsLength()))
def run(data, x):
    it = Interpreter(model_content=data, num_threads=1); it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x); it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])
for name in sys.argv[1].split(","):
    if name == "seed_cnn":
        model, x = seed_cnn(), np.random.default_rng(0).random((1, 28, 28, 1), np.float32)
    else:
        model = logits_model(keras_application(name, 96, 0, "data"))
        size = int(model.inputs[0].shape[1])
        x = keras_application_inputs(name, size, 1, 5)
    g = float_graph(model)
    runtime, const = write_tflite(g), write_tflite(g, runtime_batch_reshapes=False)
    ref = np.asarray(model(x))
    paths = []
    row = {}
    for label, data in (("runtime", runtime), ("constant", const)):
        p = Path(WORK, f"{name}_{label}.tflite"); p.write_bytes(data); paths.append(p)
        y = run(data, x)
        row[label] = {"ops": sum(ops_of(data).values()), "max_err_rel": float(np.max(np.abs(y - ref)) / np.max(np.abs(ref))),
                      "differs_from_runtime_output": None}
        row[label]["y"] = y
    row["constant"]["differs_from_runtime_output"] = float(np.max(np.abs(row["constant"]["y"] - row["runtime"]["y"])))
    for label in ("runtime", "constant"): del row[label]["y"]
    np.save(Path(WORK, "x.npy"), x)
    lat = Z.latency_in_processes(paths, Path(WORK, "x.npy"), 5, 4)
    row["latency_cpu_ms"] = lat["cpu"]; row["cpu_ratio_runtime_over_constant"] = lat.get("cpu_ratio")
    row["cpu_processes"] = lat.get("cpu_processes")
    out[name] = row
    print(name, json.dumps(row), flush=True)
    keras.backend.clear_session()
json.dump(out, open(sys.argv[2] if len(sys.argv) > 2 else Path(WORK, "result.json"), "w"), indent=1)
