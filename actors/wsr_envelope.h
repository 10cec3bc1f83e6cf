//  wsr_envelope — (placeholder)
#ifndef WSR_ENVELOPE_H_INCLUDED
#define WSR_ENVELOPE_H_INCLUDED
#endif
