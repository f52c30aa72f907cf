#!/usr/bin/env python3
"""Checks Momentum's exported .tflite files in Google's own interpreter (LiteRT).

Usage: litert_check.py DIR

DIR is what `cargo run -p momentum-device --example export_fixtures -- DIR` writes:
model.tflite/model.json (float32), model_int8.tflite/model_int8.json (int8 dynamic range) and
check.json (raw feature rows with the Rust model's probabilities). For each file this script
checks the sha256 against its metadata, the input/output tensors and the serving_default
signature, then runs the golden vectors of the metadata and the check rows through
ai_edge_litert's Interpreter and compares with the Rust model: within 1e-5 for float32 and 1e-2
for int8. It exits 1 on any mismatch, 2 on unusable input.
"""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

# File, metadata, largest accepted |LiteRT - Rust| (the bounds).
FILES = [
    ("model.tflite", "model.json", 1e-5),
    ("model_int8.tflite", "model_int8.json", 1e-2),
]


def check_file(directory: Path, name: str, meta_name: str, tolerance: float, check: dict) -> bool:
    data = (directory / name).read_bytes()
    meta = json.loads((directory / meta_name).read_text())
    ok = True
    digest = hashlib.sha256(data).hexdigest()
    if digest != meta["sha256"] or len(data) != meta["size"]:
        print(f"FAIL {name}: sha256/size {digest}/{len(data)} != metadata {meta['sha256']}/{meta['size']}")
        ok = False
    if meta["golden_tolerance"] > tolerance:
        print(f"FAIL {name}: metadata tolerance {meta['golden_tolerance']} is looser than {tolerance}")
        ok = False

    interpreter = Interpreter(model_content=data)
    interpreter.allocate_tensors()
    (inp,) = interpreter.get_input_details()
    (out,) = interpreter.get_output_details()
    n = len(meta["feature_names"])
    if inp["name"] != meta["input"]["name"] or list(inp["shape"]) != [1, n] or inp["dtype"] != np.float32:
        print(f"FAIL {name}: input {inp['name']} {inp['shape']} {inp['dtype']}")
        return False
    if out["name"] != meta["output"]["name"] or list(out["shape"]) != [1, 1] or out["dtype"] != np.float32:
        print(f"FAIL {name}: output {out['name']} {out['shape']} {out['dtype']}")
        return False

    inputs = [g["input"] for g in meta["golden"]] + check["inputs"]
    expected = [g["probability"] for g in meta["golden"]] + check["expected"]
    worst, worst_row = 0.0, -1
    for row, (x, want) in enumerate(zip(inputs, expected)):
        interpreter.set_tensor(inp["index"], np.asarray([x], dtype=np.float32))
        interpreter.invoke()
        got = float(interpreter.get_tensor(out["index"])[0][0])
        error = abs(got - want)
        if not error <= worst:
            worst, worst_row = error, row
    if not worst <= tolerance:
        print(f"FAIL {name}: |LiteRT - Rust| = {worst:.3e} at row {worst_row} > {tolerance:.0e}")
        ok = False

    # The signature runner LiteRT apps use: same numbers by tensor names.
    runner = interpreter.get_signature_runner("serving_default")
    got = float(runner(features=np.asarray([inputs[0]], dtype=np.float32))["probability"][0][0])
    if not abs(got - expected[0]) <= tolerance:
        print(f"FAIL {name}: serving_default signature gives {got}, expected {expected[0]}")
        ok = False

    status = "ok  " if ok else "FAIL"
    print(f"{status} {name}: {len(inputs)} rows, max |LiteRT - Rust| = {worst:.3e} (tolerance {tolerance:.0e})")
    return ok


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    directory = Path(sys.argv[1])
    try:
        check = json.loads((directory / "check.json").read_text())
    except (OSError, ValueError) as e:
        print(f"cannot read {directory / 'check.json'}: {e}", file=sys.stderr)
        return 2
    if len(check["inputs"]) != len(check["expected"]) or not check["inputs"]:
        print("check.json: inputs and expected differ in length or are empty", file=sys.stderr)
        return 2
    results = [check_file(directory, f, m, tol, check) for f, m, tol in FILES]
    passed = sum(results)
    print(f"litert_check: {passed} of {len(results)} files match the Rust model")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
