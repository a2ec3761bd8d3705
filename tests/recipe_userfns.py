"""User functions the recipe tests name as ``tests.recipe_userfns:<name>`` (real imports, no mocks)."""

import torch


def rmsprop(params, lr):
    return torch.optim.RMSprop(params, lr=lr)


def not_an_optimizer(params, lr):
    return [p for p in params]


def l1_loss(outputs, targets):
    return (outputs - targets).abs().mean()


def raising_loss(outputs, targets):
    raise ValueError("no such column\nsecond line")


def list_loss(outputs, targets):
    return [1.0]


def error_rate(outputs, targets):
    """Batch-mean misclassification, a float."""
    return (outputs.argmax(1) != targets).float().mean().item()


def text_metric(outputs, targets):
    return "good"


class Namespace:
    @staticmethod
    def tensor_metric(outputs, targets):
        return (outputs.argmax(1) == targets).float().mean()
