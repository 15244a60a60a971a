"""modelfleet: many models behind one SageMaker-compatible endpoint."""
