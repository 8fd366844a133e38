"""kiln.registry"""
