"""`dependency_updates`: the plan's monthly `pnpm update`, computed by the real package manager."""
