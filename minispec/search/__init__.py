"""Architecture search: choose a student under a parameter budget the Minitron paper's way
(enumerate, score after pruning, short-distil the top_k, rank)."""
