"""What the tools (`cs336_lab`) and the grader (`cs336_grading`) share: one home for each helper.

Never imported by `cs336_basics` (the assignment stands alone) and never importing it, `cs336_lab` or
`cs336_grading`: it sits below both wings.
"""
