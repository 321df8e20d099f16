"""A short training loop: an MLP on scikit-learn's digits, with and without label smoothing.

Run: python examples/train_digits.py
"""

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import labelsmooth as ls


def train(eps: float, seed: int = 0) -> tuple[float, float]:
    torch.manual_seed(seed)
    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x / 16.0, y, test_size=0.3, random_state=seed, stratify=y)
    xtr, xte = torch.tensor(xtr, dtype=torch.float32), torch.tensor(xte, dtype=torch.float32)
    ytr, yte = torch.tensor(ytr), torch.tensor(yte)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = ls.CrossEntropyLoss(label_smoothing=eps)
    for _ in range(100):
        for idx in torch.randperm(len(ytr)).split(64):
            opt.zero_grad()
            loss_fn(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
    with torch.no_grad():
        logits = model(xte)
    acc = (logits.argmax(1) == yte).float().mean().item()
    nll = torch.nn.functional.cross_entropy(logits, yte).item()
    return acc, nll


if __name__ == "__main__":
    for eps in (0.0, 0.1):
        acc, nll = train(eps)
        print(f"label_smoothing={eps:.1f}: test accuracy {acc:.3f}, test NLL {nll:.3f}")
