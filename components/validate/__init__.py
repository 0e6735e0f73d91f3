"""validate: is the collected set fit for consensus filtering and training?"""
