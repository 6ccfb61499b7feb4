"""Quantization-aware training for Keras 3, compiled straight to TFLite by qcompiler.

    import qcompiler.qat as qat
    qat_model = qat.quantize_model(float_model, quant_delay=200)
    qat_model.compile(...); qat_model.fit(...)
    qat_model.save("qat.keras")          # loads back with keras.saving.load_model once qcompiler.qat is imported
    # qcompiler compile qat.keras --mode int8   (the trained ranges, no calibration)
    float_again = qat.strip(qat_model)

This package imports Keras; the IR, passes and backend never import it. The quantization grid is
tf.quantization.fake_quant_with_min_max_vars', the same one qcompiler/quant/math.py lowers with.
"""
from qcompiler.qat.layers import FakeQuant, QuantConv2D, QuantDense, QuantDepthwiseConv2D, fold_batch_norm
from qcompiler.qat.transform import quantize_model, strip

__all__ = ["FakeQuant", "QuantConv2D", "QuantDense", "QuantDepthwiseConv2D", "fold_batch_norm", "quantize_model",
           "strip"]
