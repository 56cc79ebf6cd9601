"""What template authors get on their own machine: the starter folder and the editor types."""

from __future__ import annotations

from moonshard.authoring.starter_folder import StarterFolderError, type_definitions, write_starter

__all__ = ["StarterFolderError", "type_definitions", "write_starter"]
