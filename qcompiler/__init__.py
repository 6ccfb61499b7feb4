"""qcompiler: Keras → IR → passes → TFLite."""
