"""A small ONNX graph under construction: nodes named after the module tree, weights as initializers.

Every tensor a node produces carries the node's own name, so a path of ``sknet.tree``
(``layer2.0.conv1.paths.1.bn``) names both the node and its output, and a weight
initializer keeps its canonical name (``layer2.0.conv1.paths.1.bn.running_var``).
"""
import numpy as np
from onnx import TensorProto, helper, numpy_helper

MIN_OPSET = 13  # Softmax over one axis, Split/Squeeze taking their sizes/axes as inputs


class GraphBuilder:
    def __init__(self, tensors, eps):
        self.tensors = tensors
        self.eps = eps
        self.nodes = []
        self.initializers = {}

    def weight(self, name):
        """The canonical tensor ``name`` as an fp32 initializer of the same name."""
        if name not in self.initializers:
            arr = np.ascontiguousarray(self.tensors[name], dtype=np.float32)
            self.initializers[name] = numpy_helper.from_array(arr, name)
        return name

    def ints(self, name, values):
        """An int64 constant (shapes, axes, split sizes) as an initializer."""
        if name not in self.initializers:
            self.initializers[name] = numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)
        return name

    def node(self, op, inputs, name, **attrs):
        self.nodes.append(helper.make_node(op, list(inputs), [name], name=name, **attrs))
        return name

    def multi(self, op, inputs, name, outputs, **attrs):
        self.nodes.append(helper.make_node(op, list(inputs), list(outputs), name=name, **attrs))
        return list(outputs)

    def model(self, name, inputs, outputs, opset, doc="", metadata=None):
        graph = helper.make_graph(self.nodes, name, inputs, outputs, list(self.initializers.values()))
        opset_id = helper.make_opsetid("", opset)
        model = helper.make_model(graph, opset_imports=[opset_id], producer_name="sknet", doc_string=doc)
        # The oldest IR that can carry this opset, so that older runtimes load the file too.
        model.ir_version = helper.find_min_ir_version_for([opset_id])
        for key, value in (metadata or {}).items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, str(value)
        return model


def tensor_info(name, dims):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)
