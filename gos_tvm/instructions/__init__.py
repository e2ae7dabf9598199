"""The primitive-instruction IR: `OpProgram`, its lowerings to torch and TVM, and the operator library."""
from . import library
from .lowering_te import CompiledProgram, compile_program, default_target, to_te, to_te_tensors
from .lowering_torch import ProgramModule, to_torch
from .program import INSTRUCTIONS, Instruction, Node, OpProgram, ProgramBuilder

__all__ = ["OpProgram", "Node", "Instruction", "INSTRUCTIONS", "ProgramBuilder", "to_torch", "ProgramModule",
           "to_te", "to_te_tensors", "compile_program", "CompiledProgram", "default_target", "library"]
