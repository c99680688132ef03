"""Steps of a drop_recreate migration that write documents, each with its undo beside it."""
