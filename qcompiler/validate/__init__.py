"""Validation tools: how much accuracy quantization costs, tensor by tensor."""
