"""Running ONNX graphs in onnxruntime on the CPU, fp32 in and out."""
import numpy as np

from sknet.errors import BackendMissing


def session(model):
    """An onnxruntime CPU session for a ``ModelProto`` (or serialized bytes)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendMissing("onnx", "onnxruntime", "onnx") from None
    data = model if isinstance(model, bytes) else model.SerializeToString()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: ORT warns about every unused initializer otherwise
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def run_session(sess, x):
    feed = {sess.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)}
    return sess.run(None, feed)[0]


def run(model, x):
    """Logits of ``x`` (NCHW) through ``model`` in onnxruntime, as an fp32 array."""
    return run_session(session(model), x)
