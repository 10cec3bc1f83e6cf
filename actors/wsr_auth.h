//  wsr_auth — (placeholder)
#ifndef WSR_AUTH_H_INCLUDED
#define WSR_AUTH_H_INCLUDED
#endif
