"""The model as a file and a graph: loading and atomic saving, graph upkeep, finding the eligible layers."""
