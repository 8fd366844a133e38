"""kiln.lang"""
