"""Recipes: common CNN and LSTM transfers composed from `surgery` functions."""
