#pragma once
// Names only: see ../README.md.
