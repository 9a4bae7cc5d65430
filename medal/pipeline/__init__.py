"""The three stages: cache the teacher (cache_teacher, linear_head), distil the student (distill, student_step, checkpoint), evaluate it."""
