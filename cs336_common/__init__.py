"""What the tools (`cs336_lab`), the grader (`cs336_grading`), the bench and the oracle share: one home for each helper.

    atomic.py       atomic, durable file writes (temporary file, fsync, rename; never through a planted link)
    gpt2_files.py   GPT-2's byte <-> unicode table; vocab.json + merges.txt formatted, parsed, read, checked
    state_dict.py   weights without their wrappers (DDP's `module.`, torch.compile's `_orig_mod.`)
    device.py       "auto" / "cpu" / "cuda[:N]" / "mps" -> a checked torch.device

Never imported by `cs336_basics` (the assignment stands alone) and never importing it, `cs336_lab` or
`cs336_grading`: it sits below both wings. The grader's worker hides it from student code like the tools.
"""
