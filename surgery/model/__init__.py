"""Operations on live Keras models: load/save, rebuild, heads, freezing, reinitialization, parameter setup, LoRA, verification, TF Hub layers."""
