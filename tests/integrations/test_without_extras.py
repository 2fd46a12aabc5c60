"""FlowBot without the optional extras: ``import flowbot`` and a whole run work with mlflow and ray
unimportable, and asking for them gives one clear line. (A fresh interpreter with both imports
blocked, so the installed extras cannot leak in.)"""

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import json, os, sys
    sys.modules["mlflow"] = None   # "not installed": any import of them fails
    sys.modules["ray"] = None
    os.environ["MLFLOW_TRACKING_URI"] = "sqlite:///never-created.db"  # auto mode must stay off
    import flowbot
    from flowbot.testing import ScriptedLM
    rows = [{"id": f"r{i}", "q": f"{i}*3", "a": str(i * 3)} for i in range(12)]
    task = flowbot.Task("times3", data=rows, inputs=["q"], targets=["a"], metric="numeric")
    lm = lambda: {"m": ScriptedLM(default="Answer: 3", model="m")}
    opts = dict(model="m", train_size=4, val_size=3, inner={"steps": 0}, outer={"rounds": 0})
    result = flowbot.optimize(task, providers=lm(), run_dir=sys.argv[1] + "/run", **opts)
    errors = {}
    for name, kw in (("mlflow", {"mlflow": True}), ("ray", {"backend": "ray"})):
        try:
            flowbot.optimize(task, providers=lm(), run_dir=sys.argv[1] + "/" + name, **opts, **kw)
        except ValueError as exc:
            errors[name] = str(exc)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("mlflow", "ray") and sys.modules[m] is not None)
    print(json.dumps({"test": result.test_score, "errors": errors, "loaded": loaded,
                      "db": os.path.exists("never-created.db")}))
''')


def test_a_run_and_clear_errors_without_mlflow_and_ray(tmp_path):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["test"] is not None and report["loaded"] == [] and not report["db"]
    assert report["errors"]["mlflow"] == "MLflow logging needs mlflow: pip install 'flowbot[mlflow]'"
    assert report["errors"]["ray"] == "the Ray backend needs ray: pip install 'flowbot[ray]'"
