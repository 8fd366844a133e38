"""kiln.sandbox"""
