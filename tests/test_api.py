"""The Python API as a user's training script uses it, against a real stored study."""

import subprocess
import sys

from tests.conftest import LEAN, REPO, run_cli

SCRIPT = '''
import sys
import torch
from torch.utils.data import DataLoader
from autobatch import recommend
from autobatch.workloads import build_model, load_workload

rec = recommend("api", storage=sys.argv[1], max_memory="64MiB", priority="balanced")
data = load_workload("digits", seed=0)
loader = DataLoader(data.train, batch_size=rec.batch_size, shuffle=True)
model = build_model("small_cnn", num_classes=10, input_shape=(1, 8, 8))
optimizer = torch.optim.SGD(model.parameters(), lr=rec.learning_rate, momentum=0.9)
for epoch in range(2):
    for i, (x, y) in enumerate(loader):
        loss = torch.nn.functional.cross_entropy(model(x), y) / rec.accumulation_steps
        loss.backward()
        if (i + 1) % rec.accumulation_steps == 0:
            optimizer.step()
            optimizer.zero_grad()
x, y = data.val.tensors
accuracy = (model(x).argmax(1) == y).float().mean().item()
print(f"batch={rec.batch_size} accumulation={rec.accumulation_steps} lr={rec.learning_rate:.4g} "
      f"effective={rec.effective_batch_size} predicted={rec.predicted_accuracy:.3f} "
      f"interval={rec.accuracy_interval[0]:.3f}..{rec.accuracy_interval[1]:.3f} accuracy={accuracy:.3f}")
'''


def test_training_script_uses_the_recommendation(tmp_path, sqlite_url):
    made = run_cli("tune", "--model", "small_cnn", "--dataset", "digits", "--epochs", "1", "--n-trials", "8", *LEAN,
                   "--storage", sqlite_url, "--study-name", "api", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), sqlite_url], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                                                       "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    fields = dict(item.split("=", 1) for item in proc.stdout.split())
    assert int(fields["effective"]) == int(fields["batch"]) * int(fields["accumulation"])
    assert float(fields["accuracy"]) > 0.5  # the recommended setting trains
