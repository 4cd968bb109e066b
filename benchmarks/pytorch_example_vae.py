# ruff: noqa: UP008, UP010, UP032, B007  (the example's own style, kept as written there)
"""pytorch/examples ``vae/main.py``, as written there, on binarized MNIST: the reference process.

The script of https://github.com/pytorch/examples/blob/main/vae/main.py line for line,
with two changes forced by this machine: MNIST comes from the binarized-MNIST ``.amat.gz``
files (torchvision, its downloader and its ``MNIST`` class are not installed here; the
example's loaders are DataLoaders over the same tensors aevb trains on, the test loader
over the 10,000 test images), and ``save_image`` (torchvision) is left out, as aevb runs
with ``--figures false`` for the comparison. ``benchmarks/process_cost.py`` times this
whole process beside ``aevb train``.

Usage:
    python benchmarks/pytorch_example_vae.py --epochs 3 --data-dir ../shared/data
"""

from __future__ import print_function

import argparse
import gzip
from pathlib import Path

import numpy as np
import torch
import torch.utils.data
from torch import nn, optim
from torch.nn import functional as F

parser = argparse.ArgumentParser(description="VAE MNIST Example")
parser.add_argument(
    "--batch-size",
    type=int,
    default=128,
    metavar="N",
    help="input batch size for training (default: 128)",
)
parser.add_argument(
    "--epochs", type=int, default=10, metavar="N", help="number of epochs to train (default: 10)"
)
parser.add_argument("--no-accel", action="store_true", help="disables accelerator")
parser.add_argument("--seed", type=int, default=1, metavar="S", help="random seed (default: 1)")
parser.add_argument(
    "--log-interval",
    type=int,
    default=10,
    metavar="N",
    help="how many batches to wait before logging training status",
)
parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared/data"))
args = parser.parse_args()

use_accel = not args.no_accel and torch.cuda.is_available()

torch.manual_seed(args.seed)

if use_accel:
    device = torch.device("cuda")
else:
    device = torch.device("cpu")

print(f"Using device: {device}")


def binarized_mnist(split):
    """``[N, 1, 28, 28]`` float32 0/1 from ``binarized_mnist_{split}.amat.gz`` (for MNIST)."""
    path = Path(args.data_dir) / "binarized_mnist" / f"binarized_mnist_{split}.amat.gz"
    with gzip.open(path, "rb") as f:
        chars = np.frombuffer(f.read(), dtype=np.uint8)
    bits = chars[(chars == ord("0")) | (chars == ord("1"))] - ord("0")
    x = torch.from_numpy(bits.reshape(-1, 1, 28, 28).astype(np.float32))
    return torch.utils.data.TensorDataset(x, torch.zeros(len(x), dtype=torch.int64))


kwargs = {"num_workers": 1, "pin_memory": True} if use_accel else {}
train_loader = torch.utils.data.DataLoader(
    binarized_mnist("train"), batch_size=args.batch_size, shuffle=True, **kwargs
)
test_loader = torch.utils.data.DataLoader(
    binarized_mnist("test"), batch_size=args.batch_size, shuffle=False, **kwargs
)


class VAE(nn.Module):
    def __init__(self):
        super(VAE, self).__init__()

        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


model = VAE().to(device)
optimizer = optim.Adam(model.parameters(), lr=1e-3)


# Reconstruction + KL divergence losses summed over all elements and batch
def loss_function(recon_x, x, mu, logvar):
    BCE = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")

    # see Appendix B from VAE paper:
    # Kingma and Welling. Auto-Encoding Variational Bayes. ICLR, 2014
    # https://arxiv.org/abs/1312.6114
    # 0.5 * sum(1 + log(sigma^2) - mu^2 - sigma^2)
    KLD = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())

    return BCE + KLD


def train(epoch):
    model.train()
    train_loss = 0
    for batch_idx, (data, _) in enumerate(train_loader):
        data = data.to(device)
        optimizer.zero_grad()
        recon_batch, mu, logvar = model(data)
        loss = loss_function(recon_batch, data, mu, logvar)
        loss.backward()
        train_loss += loss.item()
        optimizer.step()
        if batch_idx % args.log_interval == 0:
            print(
                "Train Epoch: {} [{}/{} ({:.0f}%)]\tLoss: {:.6f}".format(
                    epoch,
                    batch_idx * len(data),
                    len(train_loader.dataset),
                    100.0 * batch_idx / len(train_loader),
                    loss.item() / len(data),
                )
            )

    print(
        "====> Epoch: {} Average loss: {:.4f}".format(epoch, train_loss / len(train_loader.dataset))
    )


def test(epoch):
    model.eval()
    test_loss = 0
    with torch.no_grad():
        for i, (data, _) in enumerate(test_loader):
            data = data.to(device)
            recon_batch, mu, logvar = model(data)
            test_loss += loss_function(recon_batch, data, mu, logvar).item()
            # (the reconstruction image of the first batch: save_image needs torchvision)

    test_loss /= len(test_loader.dataset)
    print("====> Test set loss: {:.4f}".format(test_loss))


if __name__ == "__main__":
    for epoch in range(1, args.epochs + 1):
        train(epoch)
        test(epoch)
        with torch.no_grad():
            sample = torch.randn(64, 20).to(device)
            sample = model.decode(sample).cpu()
            # (save_image(sample.view(64, 1, 28, 28), 'results/sample_' + str(epoch) + '.png'))
