"""Tasks: data, model, loss and evaluation put together for one job."""
