"""FlashInfer's ``flashinfer.logits_processor`` names: the LogitsPipe and its processors."""

from .ops.sampling.pipe import LogitsPipe, MinP, Sample, Softmax, Temperature, TensorType, TopK, TopP

__all__ = ["LogitsPipe", "MinP", "Sample", "Softmax", "Temperature", "TensorType", "TopK", "TopP"]
