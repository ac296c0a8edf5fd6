"""What the TensorFlow and PyTorch backends share: a train step that updates the variables in place."""


def step_then(model, step, then):
    """`step`, then `then()`: in the same traced function where `fit` traces the step."""

    def train_step(data):
        logs = step(data)
        then()
        return logs

    return train_step
